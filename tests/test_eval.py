"""Evaluation pieces with known answers: windows, perplexity on the last n positions, the power-law fit
behind token efficiency, language mixes, BLEU/chrF, and the results.json / TensorBoard writers."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from t5x_like import eval as eval_lib
from t5x_like.evaluation import results as results_lib
from t5x_like.evaluation import batches, perplexity, token_efficiency as te, translation
from t5x_like.models import Decoder, DecoderConfig
from t5x_like.partitioning import unbox

MULTI30K_VAL = str(REPO.parent / 'shared' / 'data' / 'parallel' / 'multi30k' / 'val.en')


def test_stream_windows_match_concat_and_chunk():
  w = batches.pack_windows([[5, 6, 7], [8, 9]], 4, mode='stream')
  # stream 5 6 7 EOS 8 9 EOS -> one full window, the partial one dropped (as tasks.lm.concat_and_chunk)
  np.testing.assert_array_equal(w['decoder_target_tokens'], [[5, 6, 7, 1]])
  np.testing.assert_array_equal(w['decoder_input_tokens'], [[0, 5, 6, 7]])


def test_packed_windows_restart_positions_per_example():
  w = batches.pack_windows([[5, 6], [7, 8], [4]], 6, mode='packed')
  np.testing.assert_array_equal(w['decoder_target_tokens'][0], [5, 6, 1, 7, 8, 1])
  np.testing.assert_array_equal(w['decoder_input_tokens'][0], [0, 5, 6, 0, 7, 8])
  np.testing.assert_array_equal(w['decoder_positions'][0], [0, 1, 2, 0, 1, 2])
  np.testing.assert_array_equal(w['decoder_segment_ids'][0], [1, 1, 1, 2, 2, 2])
  np.testing.assert_array_equal(w['decoder_loss_weights'][1], [1, 1, 0, 0, 0, 0])


def test_perplexity_last_n_scores_only_the_tail():
  cfg = DecoderConfig(vocab_size=32, embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=2,
                      head_dim=8, mlp_dim=32, dtype='float32')
  model = Decoder(cfg)
  params = unbox(model.init(jax.random.key(0), {'decoder_input_tokens': jnp.zeros((1, 8),
                                                                                  jnp.int32)})['params'])
  rng = np.random.default_rng(0)
  windows = batches.pack_windows([rng.integers(3, 32, 40).tolist()], 8, mode='stream')
  res = perplexity.perplexity(model, params, windows, batch_size=3, last_n=2)
  # Reference: per-token NLL by hand over the same windows.
  logits = model.apply({'params': params}, windows)
  logp = jax.nn.log_softmax(logits)
  nll = -np.take_along_axis(np.asarray(logp), windows['decoder_target_tokens'][..., None], -1)[..., 0]
  assert res['num_tokens'] == nll.size == 40
  assert res['perplexity'] == pytest.approx(math.exp(nll.mean()), rel=1e-4)
  assert res['last_n']['num_tokens'] == 2 * nll.shape[0]
  assert res['last_n']['perplexity'] == pytest.approx(math.exp(nll[:, -2:].mean()), rel=1e-4)


def test_power_law_fit_recovers_its_parameters_and_token_efficiency():
  a, b, c = 2.0, 0.3, 0.05
  x = np.geomspace(1e5, 1e8, 8)
  ppl = 1.0 / (-a * x ** (-b) + c)
  fit = te.fit_power_law(x, ppl)
  assert fit['b'] == pytest.approx(b, rel=1e-3)
  assert fit['c'] == pytest.approx(c, rel=1e-3)
  # A run that reached the perplexity of 4e7 monolingual tokens with 1e7 tokens of its own: TEff 4.
  p = 1.0 / (-a * 4e7 ** (-b) + c)
  assert te.token_efficiency(fit, p, 1e7)['teff'] == pytest.approx(4.0, rel=1e-2)
  assert te.tokens_for_perplexity(fit, 1.0 / c * 0.99) == math.inf  # beyond the asymptote


def test_language_fractions_of_schedules():
  assert te.language_fractions(0.1, None, 50, 100) == pytest.approx([0.9, 0.1])
  # 0.1_0.9: clone 10% in the first half, 90% in the second.
  assert te.language_fractions(None, '0.1_0.9', 50, 100) == pytest.approx([0.9, 0.1])
  assert te.language_fractions(None, '0.1_0.9', 100, 100) == pytest.approx([0.5, 0.5])
  assert te.language_fractions(0.0, None, 10, 100) == [1.0, 0.0]


def test_bleu_and_chrf():
  refs = ['the cat sat on the mat', 'a dog runs in the park']
  perfect = translation.score(refs, refs)
  assert perfect['bleu'] == pytest.approx(100.0) and perfect['chrf'] == pytest.approx(100.0)
  worse = translation.score(['the cat sat on a mat', 'dog runs park'], refs)
  assert 0 < worse['bleu'] < 100 and 0 < worse['chrf'] < 100
  assert worse['bleu_signature'].startswith('nrefs:1')


def test_results_merge_and_tensorboard(tmp_path):
  d = str(tmp_path)
  results_lib.write_results(d, 10, {'step': 10, 'perplexity': {'lang0': {'perplexity': 5.0}}})
  results_lib.write_results(d, 10, {'mexa': {'targets': {'x@1': {'weighted': {'mean': 0.1, 'max': 0.2}}}},
                                 'token_efficiency': {'languages': {'lang1': {'teff': math.inf}}}})
  with open(tmp_path / 'eval' / '10' / 'results.json') as f:
    r = json.load(f)
  assert r['perplexity']['lang0']['perplexity'] == 5.0 and 'mexa' in r
  assert r['token_efficiency']['languages']['lang1']['teff'] is None  # inf -> null, valid JSON
  assert results_lib.read_results(d)[10] == r
  tags = results_lib.scalars(r)
  assert tags == {'ppl/lang0': 5.0, 'mexa/x@1/weighted_mean': 0.1, 'mexa/x@1/weighted_max': 0.2}
  eval_lib.write_tensorboard(d, 10, r)
  assert list((tmp_path / 'eval' / 'suite').glob('events.out.tfevents.*'))


class _ByteVocab:
  """Bytes as ids 3..258 (pad 0, eos 1): enough of a seqio vocabulary for decoding tests."""
  vocab_size = 260

  def encode(self, text):
    return [b + 3 for b in text.encode()]

  def decode(self, ids):
    return bytes(i - 3 for i in ids if i >= 3).decode(errors='replace')


def test_translation_scores_what_the_decoder_generates():
  from t5x_like import decoding
  cfg = DecoderConfig(vocab_size=260, embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=2,
                      head_dim=8, mlp_dim=32, dtype='float32')
  model = Decoder(cfg)
  params = unbox(model.init(jax.random.key(1), {'decoder_input_tokens': jnp.zeros((1, 8),
                                                                                  jnp.int32)})['params'])
  vocab = _ByteVocab()
  sources, refs = ['ein Hund', 'eine Katze', 'ein Haus'], ['a dog', 'a cat', 'a house']
  decode = eval_lib.make_decoder(model, params, vocab, batch_size=2, max_new_tokens=6)
  res = translation.translate_and_score(decode, sources, refs, prompt='{source} =')
  # The hypotheses are exactly the greedy continuations of the prompts (after the training-time
  # start token 0), cut at EOS.
  prompt = np.zeros((1, 16), np.int32)
  ids = [0] + vocab.encode('ein Hund =')
  prompt[0, :len(ids)] = ids
  row = [int(t) for t in np.asarray(decoding.greedy_decode(params, cfg, prompt, max_new_tokens=6))[0]]
  row = row[:row.index(1)] if 1 in row else row
  assert res['examples'][0]['hypothesis'] == vocab.decode(row).strip()
  assert res['num_sentences'] == 3 and 0 <= res['chrf'] <= 100
  beam = translation.translate_and_score(
      eval_lib.make_decoder(model, params, vocab, batch_size=2, beam_size=2, max_new_tokens=6),
      sources, refs)
  assert len(beam['examples']) == 3


def test_encdec_perplexity_scores_the_second_half_given_the_first():
  from t5x_like.models import EncDecConfig, EncoderDecoder
  cfg = EncDecConfig(vocab_size=32, embed_dim=16, num_encoder_layers=1, num_decoder_layers=1,
                     num_heads=2, head_dim=8, mlp_dim=32, dtype='float32')
  model = EncoderDecoder(cfg)
  example = {'encoder_input_tokens': jnp.ones((1, 4), jnp.int32),
             'decoder_input_tokens': jnp.ones((1, 4), jnp.int32)}
  params = unbox(model.init(jax.random.key(0), example)['params'])
  rng = np.random.default_rng(0)
  windows = batches.pack_windows([rng.integers(3, 32, 40).tolist()], 8, mode='stream')
  res = perplexity.perplexity(model, params, windows, batch_size=3, last_n=2)
  # Reference by hand: window [t0..t7] -> encoder t0..t3, decoder [0, t4, t5, t6] predicting t4..t7.
  t = windows['decoder_target_tokens']
  dec_in = np.concatenate([np.zeros((t.shape[0], 1), t.dtype), t[:, 4:7]], axis=1)
  logits = model.apply({'params': params}, {'encoder_input_tokens': t[:, :4],
                                            'decoder_input_tokens': dec_in})
  logp = np.asarray(jax.nn.log_softmax(logits))
  nll = -np.take_along_axis(logp, t[:, 4:, None], -1)[..., 0]
  assert res['num_tokens'] == nll.size == 20
  assert res['perplexity'] == pytest.approx(math.exp(nll.mean()), rel=1e-4)
  assert res['last_n']['perplexity'] == pytest.approx(math.exp(nll[:, -2:].mean()), rel=1e-4)
  with pytest.raises(ValueError, match='last_n=5 is longer than the scored half'):
    perplexity.perplexity(model, params, windows, last_n=5)


def test_teff_with_a_baseline_of_too_few_steps_is_one_line_before_any_checkpoint_is_read(tmp_path,
                                                                                           capsys):
  base = tmp_path / 'mono'
  for s in (1, 100, 200):  # (step 1 is in the first tenth: off the fit)
    results_lib.write_results(str(base), s, {'step': s, 'tokens_seen': {'lang0': 1000 * s},
                                             'perplexity': {'lang0': {'perplexity': 20 + 500 / s}}})
  empty = tmp_path / 'run'  # (no checkpoint, no model: the error comes first)
  empty.mkdir()
  rc = eval_lib.main(['--model_dir', str(empty), '--metrics', 'ppl,teff', '--baseline_dir', str(base)])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and len(err) == 1, err
  assert err[0].startswith(f'error: teff: the monolingual baseline(s) {base} have perplexities at 2 '
                           'evaluated step(s)'), err


def _run_without_checkpoint(tmp_path):
  """A model dir with its model config and vocabulary (100 pieces) but no checkpoint: errors about
  the texts must come before any checkpoint is read."""
  import sentencepiece as spm
  from t5x_like import run_dir
  from t5x_like import vocabulary as vocab_lib
  lines = [l for l in open(MULTI30K_VAL).read().splitlines() if l][:300]
  (tmp_path / 'text.txt').write_text('\n'.join(lines) + '\n')
  spm.SentencePieceTrainer.train(input=str(tmp_path / 'text.txt'), model_prefix=str(tmp_path / 'sp'),
                                 vocab_size=100, pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
  run = tmp_path / 'run'
  run.mkdir()
  run_dir.save_model_config(str(run), DecoderConfig(vocab_size=100, embed_dim=16, num_layers=1,
                                                    num_heads=2, num_kv_heads=2, head_dim=8,
                                                    mlp_dim=32))
  vocab_lib.save_vocabulary(vocab_lib.SentencePieceVocabulary(str(tmp_path / 'sp.model')),
                            str(run / 'vocabulary'))
  return run


def test_bleu_files_that_do_not_pair_up_are_one_line_before_any_checkpoint_is_read(tmp_path, capsys):
  # Found only after every source had been decoded ("50 hypotheses for 40 references"): minutes of
  # a large model's decoding, at every step of --all_steps.
  src, ref = tmp_path / 'src.en', tmp_path / 'ref.de'
  src.write_text('a dog\na cat\na house\n')
  ref.write_text('ein Hund\neine Katze\n')
  run = _run_without_checkpoint(tmp_path)
  for files, want in (
      (['--src_file', str(src), '--ref_file', str(ref)],
       f'error: bleu needs one reference per source line: --src_file {src} has 3 lines, --ref_file '
       f'{ref} has 2'),
      (['--src_file', str(src)], 'error: bleu needs --src_file and --ref_file')):
    assert eval_lib.main(['--model_dir', str(run), '--metrics', 'bleu', *files]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [want]


def test_a_missing_evaluation_text_is_one_line_before_any_checkpoint_is_read(tmp_path, capsys):
  # It was read, and found missing, after the first checkpoint had been read ("error: step 4: ...").
  run = _run_without_checkpoint(tmp_path)
  missing = tmp_path / 'no.txt'
  assert eval_lib.main(['--model_dir', str(run), '--metrics', 'ppl', '--eval_files', str(missing)]) == 2
  assert capsys.readouterr().err.strip().splitlines() == [f'error: evaluation text {missing} not found']


def test_the_step_line_shows_bleu_and_chrf():
  line = eval_lib.summary_line({'translation': {'bleu': 12.345, 'chrf': 40.0, 'num_sentences': 3,
                                                'beam_size': 2, 'examples': []}})
  assert line == 'bleu 12.35 chrF 40.00 (3 sentences, beam 2)'  # (it printed nothing for bleu)


def test_mexa_texts_that_are_missing_or_misaligned_are_one_line_before_any_checkpoint_is_read(
    tmp_path, capsys):
  # Found after the checkpoint was read and the pivot embedded (minutes for a large model).
  run = _run_without_checkpoint(tmp_path)
  pivot, target = tmp_path / 'en.txt', tmp_path / 'de.txt'
  pivot.write_text('a dog\na cat\na house\n')
  target.write_text('ein Hund\neine Katze\n')
  for flags, want in (
      (['--mexa_pivot', str(pivot), '--mexa_target', str(target)],
       f'error: mexa: {target} has 2 lines, the pivot {pivot} has 3: files must be line-aligned'),
      (['--mexa_pivot', str(pivot)],
       'error: mexa: the model has one language; pass --mexa_target (e.g. flores:deu_Latn)'),
      (['--mexa_pivot', str(pivot), '--mexa_target', str(tmp_path / 'no.txt')],
       f'error: evaluation text {tmp_path / "no.txt"} not found')):
    assert eval_lib.main(['--model_dir', str(run), '--metrics', 'mexa', *flags]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [want]
