"""HF conversion: forward parity (both directions), bit-exact round trips, generation parity, the CLI.

Tiny random fp32 models; the HF side is transformers' own PyTorch implementation, loaded offline.
"""
import json
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from t5x_like import decoding, run_dir, train
from t5x_like.convert import from_hf, llama, safetensors_stream as st, to_hf
from t5x_like.convert.__main__ import main as convert_main
from t5x_like.convert.mapping import ConversionError
from t5x_like.models import DecoderConfig, EncDecConfig, RopeScaling, build_model

TOL = 1e-4
DEC = dict(vocab_size=128, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
           mlp_dim=48, dtype='float32')
ENCDEC = dict(vocab_size=128, embed_dim=32, num_encoder_layers=2, num_decoder_layers=3, num_heads=4,
              head_dim=8, mlp_dim=48, dtype='float32')
CONFIGS = {
    'decoder_scan_gqa_untied': DecoderConfig(**DEC),
    'decoder_unscanned_tied_mha': DecoderConfig(**{**DEC, 'num_kv_heads': 4}, scan_layers=False,
                                                tie_embeddings=True),
    'encdec_scan_untied': EncDecConfig(**ENCDEC),
    'encdec_unscanned_silu': EncDecConfig(**ENCDEC, scan_layers=False, mlp_activation='silu'),
}


def init_params(cfg, seed=0):
  """Random fp32 parameters straight from the abstract shapes (no flax init to compile); norm scales
  around 1 but not 1, so a swapped or dropped norm shows in the logits."""
  rng = np.random.default_rng(seed)

  def make(tree):
    return {k: make(v) if isinstance(v, dict) else
            (1.0 + 0.1 * rng.standard_normal(v.shape) if k == 'scale' else
             0.2 * rng.standard_normal(v.shape)).astype(np.float32)
            for k, v in tree.items()}
  return make(run_dir.abstract_params(cfg))


def ours_logits(cfg, params, tokens, dec_tokens=None):
  if cfg.family == 'decoder':
    batch = {'decoder_input_tokens': jnp.asarray(tokens)}
  else:
    batch = {'encoder_input_tokens': jnp.asarray(tokens), 'decoder_input_tokens': jnp.asarray(dec_tokens)}
  return np.asarray(jax.jit(build_model(cfg).apply)({'params': params}, batch))


def hf_logits(model, cfg, tokens, dec_tokens=None):
  with torch.no_grad():
    if cfg.family == 'decoder':
      return model(torch.tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()
    return model(input_ids=torch.tensor(np.asarray(tokens), dtype=torch.long),
                 decoder_input_ids=torch.tensor(np.asarray(dec_tokens), dtype=torch.long)).logits.numpy()


def load_hf(path, cfg):
  from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM
  cls = AutoModelForCausalLM if cfg.family == 'decoder' else AutoModelForSeq2SeqLM
  return cls.from_pretrained(path, local_files_only=True, dtype=torch.float32).eval()


def export_dir(cfg, params, path, **kw):
  to_hf.write_configs(cfg, str(path), 'float32', kw.pop('hf_arch', 't5'))
  to_hf.write_weights(params, cfg, str(path), **kw)
  return str(path)


def tokens_for(cfg, n=2, length=11, seed=1):
  rng = np.random.default_rng(seed)
  enc = rng.integers(3, cfg.vocab_size, (n, length)).astype(np.int32)
  dec = np.concatenate([np.zeros((n, 1), np.int32), rng.integers(3, cfg.vocab_size, (n, 6))], 1)
  return enc, dec.astype(np.int32)


def flat(tree, prefix=''):
  for k, v in tree.items():
    yield from (flat(v, f'{prefix}{k}/') if isinstance(v, dict) else [(prefix + k, v)])


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_export_parity_roundtrip_and_generation(name, tmp_path):
  cfg = CONFIGS[name]
  params = init_params(cfg)
  hf_arch = 'mt5' if name == 'encdec_unscanned_silu' else 't5'
  path = export_dir(cfg, params, tmp_path / 'hf', hf_arch=hf_arch)
  model = load_hf(path, cfg)
  if cfg.family == 'encdec' and not cfg.tie_embeddings:
    # The tying trap: the head must not have been replaced by the embedding.
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
  enc, dec = tokens_for(cfg)
  delta = np.abs(ours_logits(cfg, params, enc, dec) - hf_logits(model, cfg, enc, dec)).max()
  print(f'{name}: here -> HF max |dlogit| = {delta:.2e}')
  assert delta <= TOL

  # here -> HF -> here: bit-exact parameters, same config.
  cfg2, params2 = from_hf.read_weights(path, dtype='float32', scan_layers=cfg.scan_layers)
  assert cfg2 == cfg
  a, b = dict(flat(params)), dict(flat(params2))
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)

  # Greedy generation: transformers' generate == our greedy_decode, token for token.
  prompt = enc[:1, :4] if cfg.family == 'decoder' else enc[:1]
  ours = np.asarray(decoding.greedy_decode(params, cfg, prompt, max_new_tokens=12))[0]
  out = model.generate(torch.tensor(prompt, dtype=torch.long), max_new_tokens=12, do_sample=False,
                       eos_token_id=1, pad_token_id=0,
                       # transformers 5 sizes T5's cache by the encoder's layer count: our 2+3 config
                       # would index past it.
                       use_cache=cfg.family == 'decoder')[0].tolist()
  theirs = out[prompt.shape[1]:] if cfg.family == 'decoder' else out[1:]
  n = len(theirs)
  assert ours[:n].tolist() == theirs and not ours[n:].any(), (ours, theirs)


# Llama 3.1's rope scaling at a size where each of its three frequency bands holds some of the
# head's 4 frequencies (wavelengths 6.3, 63, 630, 6300 against an original context of 16).
LLAMA3_ROPE = {'rope_type': 'llama3', 'rope_theta': 10000.0, 'factor': 8.0, 'low_freq_factor': 1.0,
               'high_freq_factor': 4.0, 'original_max_position_embeddings': 16}


def _hf_llama(tmp_path, tie=False, rope=None):
  from transformers import LlamaConfig, LlamaForCausalLM
  torch.manual_seed(0)
  c = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=1, rms_norm_eps=1e-5,
                  rope_parameters=rope or {'rope_type': 'default', 'rope_theta': 5000.0},
                  tie_word_embeddings=tie, max_position_embeddings=64)
  m = LlamaForCausalLM(c).eval()
  with torch.no_grad():  # norms start at 1: make them informative
    for n, p in m.named_parameters():
      if 'norm' in n:
        p.add_(0.1 * torch.randn_like(p))
  m.save_pretrained(tmp_path)
  return m


def _hf_t5_untied(tmp_path):
  """A v1.1 checkpoint with a real untied head, written past the tying trap (as published ones are)."""
  from transformers import T5Config, T5ForConditionalGeneration
  torch.manual_seed(0)
  c = T5Config(vocab_size=96, d_model=32, d_kv=8, d_ff=40, num_layers=2, num_decoder_layers=1,
               num_heads=4, feed_forward_proj='gated-gelu', dropout_rate=0.0)
  m = T5ForConditionalGeneration(c)
  sd = {k: v.numpy() for k, v in m.state_dict().items()
        if k not in ('encoder.embed_tokens.weight', 'decoder.embed_tokens.weight')}
  sd['lm_head.weight'] = np.random.default_rng(0).standard_normal((96, 32)).astype(np.float32)
  specs = [st.TensorSpec(k, v.shape, v.dtype) for k, v in sorted(sd.items())]
  st.write(str(tmp_path), specs, lambda s: sd[s.name])
  d = json.loads(c.to_json_string())
  d.update(tie_word_embeddings=False, scale_decoder_outputs=False,
           architectures=['T5ForConditionalGeneration'])
  (tmp_path / 'config.json').write_text(json.dumps(d))
  from transformers import AutoModelForSeq2SeqLM
  return AutoModelForSeq2SeqLM.from_pretrained(str(tmp_path), local_files_only=True).eval()


@pytest.mark.parametrize('kind', ['llama_gqa', 'llama_tied_unscanned', 'llama31_rope', 't5_untied',
                                  't5_saved_by_hf'])
def test_import_parity_and_bit_exact_hf_roundtrip(kind, tmp_path):
  src = tmp_path / 'src'
  scan = kind != 'llama_tied_unscanned'
  if kind.startswith('llama'):
    model = _hf_llama(src, tie=kind == 'llama_tied_unscanned',
                      rope=LLAMA3_ROPE if kind == 'llama31_rope' else None)
  elif kind == 't5_untied':
    model = _hf_t5_untied(src)
  else:
    from transformers import T5Config, T5ForConditionalGeneration
    torch.manual_seed(1)
    model = T5ForConditionalGeneration(T5Config(
        vocab_size=96, d_model=32, d_kv=8, d_ff=40, num_layers=1, num_heads=2,
        feed_forward_proj='gated-gelu', tie_word_embeddings=False)).eval()
    model.save_pretrained(src)  # transformers 5 drops the head: it *is* shared.weight, unscaled
  cfg, params = from_hf.read_weights(str(src), dtype='float32', scan_layers=scan)
  enc, dec = tokens_for(cfg, seed=3)
  delta = np.abs(ours_logits(cfg, params, enc, dec) - hf_logits(model, cfg, enc, dec)).max()
  print(f'{kind}: HF -> here max |dlogit| = {delta:.2e}')
  assert delta <= TOL

  # HF -> here -> HF: every tensor bit-exact.
  out = tmp_path / 'out'
  export_dir(cfg, params, out)
  a, b = st.Reader(str(src)), st.Reader(str(out))
  extra = set(b.keys()) - set(a.keys())
  assert extra == ({'lm_head.weight'} if kind == 't5_saved_by_hf' else set())
  for k in a.keys():
    np.testing.assert_array_equal(np.asarray(a.get(k)), np.asarray(b.get(k)), err_msg=k)
  if extra:  # the implicit head became explicit, with the embedding's values
    np.testing.assert_array_equal(np.asarray(b.get('lm_head.weight')), np.asarray(a.get('shared.weight')))
  if kind == 'llama31_rope':
    assert cfg.rope_scaling == RopeScaling(8.0, 1.0, 4.0, 16) and cfg.rope_theta == 10000.0
    written = json.loads((out / 'config.json').read_text())['rope_parameters']
    assert written == {**LLAMA3_ROPE, 'rope_theta': 10000.0}, written
    # The same model as transformers 4 described it (rope_theta + rope_scaling) reads the same.
    d = json.loads((src / 'config.json').read_text())
    d4 = {**{k: v for k, v in d.items() if k != 'rope_parameters'}, 'rope_theta': 10000.0,
          'rope_scaling': {k: v for k, v in LLAMA3_ROPE.items() if k != 'rope_theta'}}
    assert llama.from_hf_config(d4, scan_layers=scan, dtype='float32') == cfg
    # model.json keeps it: a run resumed or evaluated from it rotates as the import did; so does
    # the gin file written to continue pretraining.
    run_dir.save_model_config(str(tmp_path), cfg)
    assert run_dir.load_model_config(str(tmp_path)) == cfg
    train.parse_gin([from_hf.write_gin(str(tmp_path), cfg, str(src), None, 0)], [], [])
    assert DecoderConfig() == cfg


def test_sharded_export_loads(tmp_path):
  cfg = CONFIGS['decoder_scan_gqa_untied']
  params = init_params(cfg, seed=2)
  path = export_dir(cfg, params, tmp_path, max_shard_bytes=20_000)
  index = json.loads((tmp_path / st.INDEX_FILE).read_text())
  files = set(index['weight_map'].values())
  assert len(files) > 2 and not (tmp_path / st.SINGLE_FILE).exists()
  enc, _ = tokens_for(cfg)
  assert np.abs(ours_logits(cfg, params, enc) - hf_logits(load_hf(path, cfg), cfg, enc)).max() <= TOL
  # bfloat16 export: exactly the rounded weights.
  to_hf.write_weights(params, cfg, str(tmp_path / 'bf16'), dtype='bfloat16')
  got = st.Reader(str(tmp_path / 'bf16')).get('lm_head.weight')
  assert got.dtype == st.np_dtype('bfloat16')
  np.testing.assert_array_equal(got, params['lm_head']['kernel'].T.astype(st.np_dtype('bfloat16')))


def test_unsupported_hf_fields_are_refused(tmp_path):
  _hf_llama(tmp_path)
  d = json.loads((tmp_path / 'config.json').read_text())
  for field, value in [('attention_bias', True), ('sliding_window', 4096), ('hidden_act', 'gelu'),
                       ('rope_parameters', {'rope_type': 'yarn', 'rope_theta': 1e4, 'factor': 8.0}),
                       ('rope_parameters', {'rope_type': 'llama3', 'rope_theta': 1e4, 'factor': 8.0}),
                       ('rope_scaling', {'type': 'linear', 'factor': 2.0})]:
    # (rope_scaling: as transformers 4 wrote it, beside rope_theta and without rope_parameters)
    other = {'rope_parameters': None, 'rope_theta': 1e4} if field == 'rope_scaling' else {}
    (tmp_path / 'config.json').write_text(json.dumps({**d, **other, field: value}))
    with pytest.raises(ConversionError, match=field):
      from_hf.read_weights(str(tmp_path))
  (tmp_path / 'config.json').write_text(json.dumps(d))
  os.remove(tmp_path / 'model.safetensors')
  with pytest.raises(ConversionError, match='model.safetensors'):
    from_hf.read_weights(str(tmp_path))


def test_learned_positions_refused_with_option_name(tmp_path):
  cfg = DecoderConfig(**DEC, position_embedding='learned', max_length=64)
  with pytest.raises(ConversionError, match='position_embedding'):
    to_hf.write_configs(cfg, str(tmp_path), 'float32')


def test_cli_errors_are_one_line(tmp_path, capsys):
  assert convert_main(['to-hf', '--model_dir', str(tmp_path / 'nope'), '--out', str(tmp_path / 'o')]) == 2
  assert convert_main(['from-hf', '--hf', str(tmp_path / 'nope'), '--out', str(tmp_path / 'o')]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 2 and all(l.startswith('error: ') and 'nope' in l for l in err)
  # A folder without weights is named with a few of its files, not all of them.
  crowded = tmp_path / 'crowded'
  crowded.mkdir()
  for i in range(30):
    (crowded / f'f{i:02d}.txt').touch()
  assert convert_main(['from-hf', '--hf', str(crowded), '--out', str(tmp_path / 'o')]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith(f'error: {crowded} has no model.safetensors or model.safetensors.index.json '
                        '(found: f00.txt, f01.txt, f02.txt, f03.txt, f04.txt, f05.txt, f06.txt, f07.txt, '
                        '... (30 in all)); PyTorch .bin'), err
  assert not (tmp_path / 'o').exists()


def test_without_transformers_both_directions_stop_in_one_line_before_writing(tmp_path, capsys,
                                                                              monkeypatch):
  hf, run = tmp_path / 'hf', tmp_path / 'run'
  _hf_llama(hf)
  cfg = DecoderConfig(**DEC)
  os.makedirs(run)
  run_dir.save_model_config(str(run), cfg)
  from_hf.save_checkpoint(str(run), init_params(cfg))
  capsys.readouterr()
  # As where the hf extra is not installed: `import transformers` fails (None in sys.modules).
  monkeypatch.setitem(sys.modules, 'transformers', None)
  before = sorted(os.listdir(tmp_path))
  assert convert_main(['from-hf', '--hf', str(hf), '--out', str(tmp_path / 'imported')]) == 2
  assert convert_main(['to-hf', '--model_dir', str(run), '--out', str(tmp_path / 'exported')]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 2, err
  assert all(l.startswith('error: converting checkpoints to or from Hugging Face needs transformers, '
                          "which the hf extra installs (pip install -e '.[hf]')") for l in err), err
  assert sorted(os.listdir(tmp_path)) == before  # neither output nor the export's staging folder


def test_truncated_or_garbled_safetensors_are_refused_naming_the_file_before_writing(tmp_path,
                                                                                      capsys):
  hf = tmp_path / 'hf'
  _hf_llama(hf)
  weights = (hf / 'model.safetensors').read_bytes()
  out = tmp_path / 'out'
  capsys.readouterr()  # (transformers' progress bars)
  for cut, expected in ((len(weights) - 1, 'truncated: its header places tensor data up to byte '
                         f'{len(weights)}, the file has {len(weights) - 1} bytes'),
                        (5, 'not a readable safetensors file (5 bytes; declares a '),
                        (40, 'not a readable safetensors file (40 bytes; declares a ')):
    (hf / 'model.safetensors').write_bytes(weights[:cut])
    assert convert_main(['from-hf', '--hf', str(hf), '--out', str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f'error: {hf / "model.safetensors"}: {expected}') and '\n' not in err, err
    assert not out.exists()  # refused before anything was written


def test_import_checks_every_shape_before_writing_and_reads_back(tmp_path):
  hf = tmp_path / 'hf'
  m = _hf_llama(hf)
  good = json.loads((hf / 'config.json').read_text())
  (hf / 'config.json').write_text(json.dumps({**good, 'intermediate_size': 48}))
  out = tmp_path / 'out'
  with pytest.raises(ConversionError, match=r'mlp.*shape \[40, 32\], expected \[48, 32\]'):
    from_hf.import_hf(str(hf), str(out), log=lambda *_: None)
  assert not (out / 'checkpoints').exists()  # refused before any write

  # The checkpoint written parameter by parameter restores as one tree, equal to the HF weights.
  (hf / 'config.json').write_text(json.dumps(good))
  res = from_hf.import_hf(str(hf), str(out), log=lambda *_: None)
  from t5x_like import checkpointing
  from t5x_like.run_dir import abstract_params
  restored, step = checkpointing.restore_params(str(out), abstract_params(res['config']))
  assert step == 0
  _, expected = from_hf.read_weights(str(hf))
  from flax import traverse_util
  restored_flat, expected_flat = (traverse_util.flatten_dict(t) for t in (restored, expected))
  assert list(restored_flat) == list(expected_flat)
  for path, a in restored_flat.items():
    np.testing.assert_array_equal(np.asarray(a), expected_flat[path])
  emb = m.model.embed_tokens.weight.detach().numpy()
  np.testing.assert_array_equal(np.asarray(restored['token_embed']['embedding']), emb)

  # An import interrupted between partial saves is named as such, and left for the user to delete.
  shutil.rmtree(out)
  os.makedirs(out / 'checkpoints' / '0.partial_save')
  with pytest.raises(ConversionError, match='unfinished import'):
    from_hf.import_hf(str(hf), str(out), log=lambda *_: None)
