"""The export against the references users check with, on TRAINED tiny models and real text.

A tiny decoder and a tiny encoder-decoder are trained through `python -m t5x_like.train` (the tiny
model configs, 40 steps on Multi30k captions), exported with `python -m t5x_like.convert to-hf`, and
loaded by transformers. Checked on Multi30k validation lines the models never saw:
- the exported tokenizer gives the training-time input (id 0 first for decoders, EOS last for encoders);
- per-token log-likelihoods of the project's own packed evaluation windows == transformers' (<= 1e-4);
- KL(ours || transformers) of the next-token distributions <= 1e-7, and their top-5 agree;
- greedy generation from a prompt: transformers' `generate` == `t5x_like.decoding.greedy_decode`;
- MEXA: `t5x_like.evaluation.mexa` == a MEXA computed here from transformers' `hidden_states`,
  written from cisnlp/Mexa's definition;
and, on a cloned-language export, that every language decodes alike and stops generating.
Measured values are printed (`pytest -s`) for docs/CONVERT.md's verification table.
"""
import copy
import importlib.util
import os
import pathlib

import gin
import jax
import numpy as np
import pytest
import torch
from flax import traverse_util

from t5x_like import decoding, run_dir, vocabulary
from t5x_like.convert import from_hf
from t5x_like.convert.__main__ import main as convert_main
from t5x_like.evaluation import batches, hidden_states, mexa
from t5x_like.models import DecoderConfig, build_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 40
KL_MAX = 1e-7
LOGP_TOL = 1e-4

_TRAIN_GIN = """
include 'gin_configs/runs/pretrain.gin'
include 'gin_configs/models/{family}_tiny.gin'
VOCAB_SIZE = {vocab_size}
train.model = @{config}()
train.train_data = @train/DataConfig()
DataConfig.mixture_or_task = @tasks.lm.{task}()
DataConfig.task_feature_lengths = {lengths}
tasks.lm.{task}.name = 'fidelity_{family}'
tasks.lm.{task}.train_files = ['{train}']
tasks.lm.{task}.vocabulary = @sentencepiece_vocabulary()
sentencepiece_vocabulary.model_path = '{spm}'
OptimizerConfig.learning_rate = 3e-3
OptimizerConfig.warmup_steps = 5
TrainerConfig.checkpoint_every = {steps}
TrainerConfig.log_every = {steps}
"""


def _train_and_export(tmp, family, small_vocab, small_text):
  from t5x_like import train
  decoder = family == 'decoder'
  gin_path = tmp / f'{family}.gin'
  gin_path.write_text(_TRAIN_GIN.format(
      family=family, vocab_size=small_vocab.vocab_size, steps=STEPS,
      config='DecoderConfig' if decoder else 'EncDecConfig',
      task='text_lm_task' if decoder else 'prefix_lm_task',
      lengths="{'targets': 64}" if decoder else "{'inputs': 32, 'targets': 32}",
      train=small_text['train'], spm=small_vocab.sentencepiece_model_file))
  run = str(tmp / f'{family}_run')
  try:
    rc = train.main([f'--gin_file={gin_path}', f"--gin.MODEL_DIR='{run}'",
                     f'--gin.TRAIN_STEPS={STEPS}', '--gin_search_paths', REPO])
  finally:
    gin.clear_config()
  assert rc == 0
  out = str(tmp / f'{family}_hf')
  assert convert_main(['to-hf', '--model_dir', run, '--out', out]) == 0
  cfg = run_dir.load_model_config(run)
  params, step = run_dir.load_params(run)
  assert step == STEPS
  params = jax.device_get(params)
  # The import direction on the same trained weights: HF -> here gives them back bit for bit, so every
  # number measured below holds for `from-hf` of this checkpoint as well.
  cfg_back, params_back = from_hf.read_weights(out, dtype=cfg.dtype, scan_layers=cfg.scan_layers)
  assert cfg_back == cfg
  a, b = traverse_util.flatten_dict(params), traverse_util.flatten_dict(params_back)
  assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
  from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer
  cls = AutoModelForCausalLM if decoder else AutoModelForSeq2SeqLM
  hf = cls.from_pretrained(out, local_files_only=True, dtype=torch.float32).eval()
  tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
  return {'cfg': cfg, 'params': params, 'hf': hf, 'tok': tok, 'out': out, 'run': run}


@pytest.fixture(scope='module')
def trained(tmp_path_factory, small_vocab, small_text):
  tmp = tmp_path_factory.mktemp('fidelity')
  return {f: _train_and_export(tmp, f, small_vocab, small_text) for f in ('decoder', 'encdec')}


@pytest.fixture(scope='module')
def val_lines(shared_data):
  d = shared_data / 'parallel' / 'multi30k'
  en = (d / 'val.en').read_text(encoding='utf-8').splitlines()
  de = (d / 'val.de').read_text(encoding='utf-8').splitlines()
  return en, de


def _kl_and_top5(ours, theirs):
  """max KL(ours || theirs) over positions, and the share of positions whose top-5 sets agree, near
  ties (5th and 6th logits within 1e-4) excepted."""
  lp = torch.log_softmax(torch.tensor(ours, dtype=torch.float64), -1).numpy()
  lq = torch.log_softmax(torch.tensor(theirs, dtype=torch.float64), -1).numpy()
  kl = (np.exp(lp) * (lp - lq)).sum(-1)
  srt = np.sort(ours, -1)
  tie = srt[:, -5] - srt[:, -6] < 1e-4
  same = np.array([set(a) == set(b) for a, b in zip(np.argsort(-ours, -1)[:, :5],
                                                      np.argsort(-theirs, -1)[:, :5])])
  return float(kl.max()), float(np.mean(same | tie)), float(np.mean(same))


def test_decoder_start_token_logliks_kl_top5_and_greedy(trained, val_lines, small_vocab):
  t = trained['decoder']
  cfg, params, hf, tok = t['cfg'], t['params'], t['hf'], t['tok']
  lines = val_lines[0][:48]
  ids = [small_vocab.encode(l) for l in lines]
  # The training-time input: id 0 (the targets shifted right), then the text.
  assert [tok(l)['input_ids'] for l in lines] == [[0] + x for x in ids]
  assert tok.bos_token_id == 0 and hf.generation_config.bos_token_id == 0

  # The project's own evaluation input: lines packed into windows, 0 at each segment start.
  win = batches.pack_windows(ids, 64, mode='packed')
  logits = np.asarray(jax.jit(build_model(cfg).apply)({'params': params}, win, deterministic=True))
  logp = np.asarray(jax.nn.log_softmax(logits, -1))
  ours_lp, ours_logits = [], []
  for r in range(win['decoder_target_tokens'].shape[0]):
    for s in range(1, win['decoder_segment_ids'][r].max() + 1):
      at = np.flatnonzero(win['decoder_segment_ids'][r] == s)
      targets = win['decoder_target_tokens'][r, at]
      ours_lp.append(logp[r, at, targets])
      ours_logits.append(logits[r, at])
  assert len(ours_lp) == len(lines)
  # transformers on the tokenizer's ids, one line at a time; the last position predicts EOS.
  worst, kl_max, agree, agree_raw, n_pos = 0.0, 0.0, [], [], 0
  for i, line in enumerate(lines):
    x = tok(line, return_tensors='pt')['input_ids']
    with torch.no_grad():
      theirs = hf(x).logits[0].numpy()
    targets = list(ids[i]) + [1]
    their_lp = torch.log_softmax(torch.tensor(theirs), -1).numpy()[np.arange(len(targets)), targets]
    worst = max(worst, float(np.abs(their_lp - ours_lp[i]).max()))
    k, a, a_raw = _kl_and_top5(ours_logits[i], theirs)
    kl_max = max(kl_max, k)
    agree.append(a * len(targets))
    agree_raw.append(a_raw * len(targets))
    n_pos += len(targets)
  print(f'\ndecoder export: max |dlogp| {worst:.2e}, max KL {kl_max:.2e}, top-5 agreement '
        f'{sum(agree_raw) / n_pos:.4f} ({n_pos} positions)')
  assert worst <= LOGP_TOL
  assert kl_max <= KL_MAX
  assert sum(agree) == n_pos

  # The check catches the classic subtle mapping bug: q/k rows in the interleaved rotary layout
  # instead of HF's half-split one (here in the last layer only).
  bad = copy.deepcopy(hf)
  attn = bad.model.layers[-1].self_attn
  hd = cfg.head_dim
  perm = np.concatenate([np.arange(0, hd, 2), np.arange(1, hd, 2)])
  with torch.no_grad():
    for proj in (attn.q_proj, attn.k_proj):
      w = proj.weight.view(-1, hd, proj.weight.shape[1])
      w.copy_(w[:, perm].clone())
  bad_kl = 0.0
  for i, line in enumerate(lines[:8]):
    with torch.no_grad():
      theirs = bad(tok(line, return_tensors='pt')['input_ids']).logits[0].numpy()
    bad_kl = max(bad_kl, _kl_and_top5(ours_logits[i], theirs)[0])
  print(f'interleaved-rotary bug in one layer: max KL {bad_kl:.2e}')
  assert bad_kl > 100 * KL_MAX

  # Greedy generation from a prompt: generate() on the tokenizer's ids == the project's decoder.
  prompt = 'A man in a blue shirt'
  x = tok(prompt, return_tensors='pt')['input_ids']
  theirs = hf.generate(x, max_new_tokens=16, do_sample=False)[0, x.shape[1]:].tolist()
  ours = np.asarray(decoding.greedy_decode(params, cfg, np.asarray([[0] + small_vocab.encode(prompt)]),
                                           max_new_tokens=16))[0].tolist()
  print(f'decoder greedy: {tok.decode(theirs, skip_special_tokens=True)!r}')
  n = len(theirs)
  assert ours[:n] == theirs and not any(ours[n:])
  assert tok.decode(theirs, skip_special_tokens=True).strip()


def test_encdec_eos_start_kl_top5_and_greedy(trained, val_lines, small_vocab):
  t = trained['encdec']
  cfg, params, hf, tok = t['cfg'], t['params'], t['hf'], t['tok']
  lines = val_lines[0][:48]
  ids = [small_vocab.encode(l) for l in lines]
  assert [tok(l)['input_ids'] for l in lines] == [x + [1] for x in ids]  # seqio's add_eos
  assert hf.generation_config.decoder_start_token_id == 0
  # A prefix-LM split, as the model trained: the first half into the encoder, the rest decoded.
  enc = [x[:len(x) // 2] + [1] for x in ids]
  tgt = [x[len(x) // 2:] + [1] for x in ids]
  width = max(map(len, enc + tgt))
  pad = lambda rows: np.array([r + [0] * (width - len(r)) for r in rows], np.int32)  # noqa: E731
  enc_a, tgt_a = pad(enc), pad(tgt)
  dec_in = np.zeros_like(tgt_a)
  dec_in[:, 1:] = tgt_a[:, :-1]
  ours = np.asarray(jax.jit(build_model(cfg).apply)(
      {'params': params}, {'encoder_input_tokens': enc_a, 'decoder_input_tokens': dec_in},
      deterministic=True))
  with torch.no_grad():
    theirs = hf(input_ids=torch.tensor(enc_a, dtype=torch.long),
                attention_mask=torch.tensor(enc_a != 0, dtype=torch.long),
                decoder_input_ids=torch.tensor(dec_in, dtype=torch.long)).logits.numpy()
  real = tgt_a != 0
  kl, agree, agree_raw = _kl_and_top5(ours[real], theirs[real])
  lp_o = np.asarray(jax.nn.log_softmax(ours, -1))[real, tgt_a[real]]
  lp_t = torch.log_softmax(torch.tensor(theirs), -1).numpy()[real, tgt_a[real]]
  worst = float(np.abs(lp_o - lp_t).max())
  print(f'\nencdec export: max |dlogp| {worst:.2e}, max KL {kl:.2e}, top-5 agreement {agree_raw:.4f} '
        f'({int(real.sum())} positions)')
  assert worst <= LOGP_TOL and kl <= KL_MAX and agree == 1.0

  prompt = 'A man in a blue shirt is'
  x = tok(prompt, return_tensors='pt')['input_ids']
  theirs = hf.generate(x, max_new_tokens=12, do_sample=False)[0, 1:].tolist()  # past the start 0
  ours = np.asarray(decoding.greedy_decode(params, cfg, np.asarray([small_vocab.encode(prompt) + [1]]),
                                           max_new_tokens=12))[0].tolist()
  n = len(theirs)
  assert ours[:n] == theirs and not any(ours[n:])


def _hf_hidden(hf, enc):
  """transformers' `hidden_states` (the encoder's for an encoder-decoder)."""
  with torch.no_grad():
    if hasattr(hf, 'encoder'):
      return hf.encoder(**enc, output_hidden_states=True).hidden_states
    return hf(**enc, output_hidden_states=True).hidden_states


def _reference_mexa(hf, tok, pivot, target):
  """MEXA from its definition (cisnlp/Mexa's embed_extractor.py + compute_mexa.py), on transformers:
  each sentence alone through the tokenizer, `output_hidden_states`, position-weighted mean over all
  its tokens; strict row-and-column nearest neighbours of the cosine matrix. Returns (scores per layer,
  pivot embeddings [L1, n, D])."""
  def embed(lines):
    per_layer = None
    for line in lines:
      enc = tok(line, return_tensors='pt')
      hs = _hf_hidden(hf, enc)
      w = enc['attention_mask'][0].double() * torch.arange(1, enc['input_ids'].shape[1] + 1)
      embs = [(h[0].double() * w[:, None]).sum(0) / w.sum() for h in hs]
      per_layer = per_layer or [[] for _ in embs]
      for l, e in enumerate(embs):
        per_layer[l].append(e.numpy())
    return np.array(per_layer)

  p, q = embed(pivot), embed(target)
  scores = []
  for a, b in zip(p, q):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    s = a @ b.T
    n = len(s)
    hits = sum(s[i, i] > np.delete(s[i], i).max() and s[i, i] > np.delete(s[:, i], i).max()
               for i in range(n))
    scores.append(hits / n)
  return scores, p


@pytest.mark.parametrize('family', ['decoder', 'encdec'])
def test_mexa_equals_a_transformers_mexa_on_the_export(trained, val_lines, small_vocab, family):
  t = trained[family]
  cfg, params, hf, tok = t['cfg'], t['params'], t['hf'], t['tok']
  n = 100
  # English against a paraphrase the model can match (lowercase, no final period): scores well away
  # from 0 and 1, so a changed layer convention or start token would show.
  en = val_lines[0][:n]
  de = [l.lower().rstrip(' .') for l in en]
  model = build_model(cfg)
  e_en = mexa.sentence_embeddings(model, params, small_vocab, en)
  e_de = mexa.sentence_embeddings(model, params, small_vocab, de)
  assert e_en['cut'] == e_de['cut'] == 0  # the model's own limit (2048 positions, or none) cuts nothing
  ours = mexa.mexa_by_layer(e_en, e_de)['weighted']['by_layer']
  ref, ref_en = _reference_mexa(hf, tok, en, de)
  assert len(ours) == len(ref) == (cfg.num_layers if family == 'decoder' else cfg.num_encoder_layers) + 1
  rel = np.abs(e_en['weighted'] - ref_en).max() / np.abs(ref_en).max()
  print(f'\n{family} MEXA by layer: ours {ours}, transformers {ref}; embeddings max rel diff {rel:.1e}')
  assert rel <= 1e-5
  # Equal per layer, up to one near-tie (a sentence whose partner wins by less than the rounding).
  assert all(abs(a - b) <= 1 / n + 1e-12 for a, b in zip(ours, ref))
  # The last entry is after the final norm: the pre-norm convention differs from transformers.
  x, lengths = batches.sentence_batch([small_vocab.encode(en[0])], family)
  pre = np.asarray(hidden_states.forward(model, params, x)[1])[-1, 0, :lengths[0]]
  post = np.asarray(hidden_states.forward(model, params, x, final_norm=True)[1])[-1, 0, :lengths[0]]
  last = _hf_hidden(hf, tok(en[0], return_tensors='pt'))[-1][0].numpy()
  assert np.abs(post - last).max() <= 1e-4 < np.abs(pre - last).max()


def test_mexa_cuts_at_the_model_limit_and_counts(small_vocab, small_text):
  from test_convert import init_params
  lines = pathlib.Path(small_text['validation']).read_text(encoding='utf-8').splitlines()[:20]
  lengths = [len(small_vocab.encode(l)) for l in lines]
  limit = int(np.median(lengths))
  cfg = DecoderConfig(vocab_size=small_vocab.vocab_size, embed_dim=32, num_layers=1, num_heads=4,
                      num_kv_heads=2, head_dim=8, mlp_dim=48, dtype='float32',
                      max_length=limit + 1)  # the leading 0 takes one position
  long = sum(n > limit for n in lengths)
  assert 0 < long < 20
  e = mexa.sentence_embeddings(build_model(cfg), init_params(cfg), small_vocab, lines, batch_size=8)
  assert e['cut'] == long and e['weighted'].shape == (2, 20, 32)
  from t5x_like import eval as eval_lib
  assert f'{long} sentence(s) cut' in eval_lib.summary_line({'mexa': {'targets': {}, 'cut': {'f': long}}})


def test_cloned_export_special_tokens_and_every_eos_stops(tmp_path, small_vocab):
  """Issue 13.3: 2 languages, every id cloned; text with characters outside the vocabulary."""
  from transformers import AutoModelForCausalLM, AutoTokenizer
  from tasks import cloned
  from test_convert import init_params
  cv = cloned.ClonedVocabulary(small_vocab, num_languages=2, frac_clone=1.0, seed=0)
  v = small_vocab.vocab_size
  cfg = DecoderConfig(vocab_size=cv.vocab_size, embed_dim=32, num_layers=1, num_heads=4,
                      num_kv_heads=2, head_dim=8, mlp_dim=48, dtype='float32')
  params = init_params(cfg)
  # A model that always says language 1's EOS (id V+1): every token embeds to one vector e, the
  # blocks add nothing, and only the head's column V+1 points along e.
  e = np.random.default_rng(0).standard_normal(32).astype(np.float32)
  params['token_embed']['embedding'][:] = e
  params['layers']['attention']['out']['kernel'][:] = 0
  params['layers']['mlp']['wo']['kernel'][:] = 0
  params['lm_head']['kernel'][:] = 0
  params['lm_head']['kernel'][:, v + 1] = e
  run = tmp_path / 'run'
  os.makedirs(run)
  run_dir.save_model_config(str(run), cfg)
  vocabulary.save_vocabulary(cv, str(run / 'vocabulary'))
  from_hf.save_checkpoint(str(run), params)
  out = str(tmp_path / 'hf')
  assert convert_main(['to-hf', '--model_dir', str(run), '--out', out]) == 0
  tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
  hf = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
  # Loaded from its file under its own name: another export's `cloned_language` may be imported.
  spec = importlib.util.spec_from_file_location('cloned_language_fidelity',
                                                os.path.join(out, 'cloned_language.py'))
  cloned_language = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(cloned_language)
  text = 'A man (in a hat) paid $5.'
  decoded = []
  for k in range(2):
    ids = cloned_language.encode_as_language(tok, text, k)
    assert ids == [0] + cv.encode_as(text, k)
    assert 2 + k * v in ids  # '(' or '$' is outside the vocabulary: this language's <unk>
    decoded.append(tok.decode(ids + [1 + k * v], skip_special_tokens=True))
  print(f'\ncloned decode: {decoded}')
  assert decoded[0] == decoded[1] and '<unk>' not in decoded[1] and '⟦' not in decoded[1]
  assert hf.generation_config.eos_token_id == [1, v + 1]
  # Generation in either language stops at that language's EOS.
  for k in range(2):
    x = torch.tensor([cloned_language.encode_as_language(tok, 'A man', k)])
    new = hf.generate(x, max_new_tokens=8, do_sample=False)[0, x.shape[1]:].tolist()
    assert new == [v + 1]
