"""Model behaviour that a wrong implementation would break: packing isolation, scan == unrolled,
GQA, rotary invariance, T5 buckets, remat transparency, decode cache == full forward."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_like.models import DecoderConfig, EncDecConfig, RopeScaling, build_model, layers

DEC = dict(vocab_size=97, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
           mlp_dim=48, dtype='float32')


def _init(cfg, batch):
  # Compiled whole (op by op, a tiny model's init takes seconds on the CPU), as the trainer does.
  return nn.unbox(jax.jit(build_model(cfg).init)(jax.random.key(1), batch))['params']


def _unstack(params):
  """Scanned params ({'layers': stacked}) -> unrolled layout ({'layers_i': ...})."""
  out = {k: v for k, v in params.items() if k != 'layers'}
  n = jax.tree.leaves(params['layers'])[0].shape[0]
  for i in range(n):
    out[f'layers_{i}'] = jax.tree.map(lambda x: x[i], params['layers'])
  return out


def test_scanned_and_unrolled_decoder_agree():
  tokens = jax.random.randint(jax.random.key(0), (2, 12), 1, 97)
  batch = {'decoder_input_tokens': tokens}
  scanned = DecoderConfig(**DEC, scan_layers=True)
  params = _init(scanned, batch)
  a = build_model(scanned).apply({'params': params}, batch)
  b = build_model(DecoderConfig(**DEC, scan_layers=False)).apply({'params': _unstack(params)}, batch)
  np.testing.assert_allclose(a, b, atol=1e-5)


def test_remat_does_not_change_outputs():
  batch = {'decoder_input_tokens': jnp.arange(24).reshape(2, 12) % 97}
  cfg = DecoderConfig(**DEC)
  params = _init(cfg, batch)
  a = build_model(cfg).apply({'params': params}, batch)
  b = build_model(DecoderConfig(**DEC, remat_policy='full')).apply({'params': params}, batch)
  np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize('position_embedding', ['rope', 'learned'])
def test_packed_segments_do_not_see_each_other(position_embedding):
  """Two documents packed in one row give the same logits as each on its own."""
  cfg = DecoderConfig(**DEC, position_embedding=position_embedding, max_length=32)
  rng = np.random.default_rng(0)
  a, b = rng.integers(1, 97, 5), rng.integers(1, 97, 7)
  packed = {'decoder_input_tokens': jnp.asarray([np.concatenate([a, b])]),
            'decoder_segment_ids': jnp.asarray([[1] * 5 + [2] * 7]),
            'decoder_positions': jnp.asarray([list(range(5)) + list(range(7))])}
  model = build_model(cfg)
  params = _init(cfg, packed)
  out = model.apply({'params': params}, packed)[0]
  alone_b = model.apply({'params': params}, {'decoder_input_tokens': jnp.asarray([b])})[0]
  alone_a = model.apply({'params': params}, {'decoder_input_tokens': jnp.asarray([a])})[0]
  np.testing.assert_allclose(out[:5], alone_a, atol=1e-5)
  np.testing.assert_allclose(out[5:], alone_b, atol=1e-5)


def test_causal_decoder_ignores_future_tokens():
  cfg = DecoderConfig(**DEC)
  t = jnp.asarray([[5, 6, 7, 8, 9, 10]])
  t2 = t.at[0, 4:].set(3)
  model = build_model(cfg)
  params = _init(cfg, {'decoder_input_tokens': t})
  o1 = model.apply({'params': params}, {'decoder_input_tokens': t})
  o2 = model.apply({'params': params}, {'decoder_input_tokens': t2})
  np.testing.assert_allclose(o1[0, :4], o2[0, :4], atol=1e-6)
  assert not np.allclose(o1[0, 4:], o2[0, 4:])


def test_grouped_query_attention_equals_mha_with_repeated_kv():
  x = jax.random.normal(jax.random.key(0), (2, 6, 16))
  gqa = layers.Attention(num_heads=4, num_kv_heads=2, head_dim=4)
  p = nn.unbox(gqa.init(jax.random.key(1), x, x))['params']
  mha = layers.Attention(num_heads=4, num_kv_heads=4, head_dim=4)
  rep = dict(p)
  for k in ('key', 'value'):
    rep[k] = {'kernel': jnp.repeat(p[k]['kernel'], 2, axis=1)}
  np.testing.assert_allclose(gqa.apply({'params': p}, x, x), mha.apply({'params': rep}, x, x),
                             atol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
  q = jax.random.normal(jax.random.key(0), (1, 1, 1, 8))
  k = jax.random.normal(jax.random.key(1), (1, 1, 1, 8))
  def score(pq, pk):
    rq = layers.apply_rope(q, jnp.asarray([[pq]]), 10000.0)
    rk = layers.apply_rope(k, jnp.asarray([[pk]]), 10000.0)
    return float(jnp.sum(rq * rk))
  assert score(3, 1) == pytest.approx(score(10, 8), rel=1e-4)
  assert score(3, 1) != pytest.approx(score(3, 2), rel=1e-3)


def test_t5_relative_buckets_match_transformers():
  """Against an independent implementation: Hugging Face's T5Attention (PyTorch)."""
  import torch
  from transformers.models.t5.modeling_t5 import T5Attention
  rel = np.arange(-300, 301)
  for bidirectional in (True, False):
    ours = layers.relative_position_bucket(rel, bidirectional, 32, 128)
    ref = T5Attention._relative_position_bucket(torch.tensor(rel), bidirectional=bidirectional,
                                                num_buckets=32, max_distance=128).numpy()
    np.testing.assert_array_equal(ours, ref)


def test_encdec_decoder_ignores_padding_in_inputs():
  cfg = EncDecConfig(vocab_size=50, embed_dim=32, num_encoder_layers=2, num_decoder_layers=2,
                     num_heads=4, head_dim=8, mlp_dim=48, dtype='float32')
  enc = jnp.asarray([[4, 5, 6, 1, 0, 0]])
  enc_more_pad = jnp.asarray([[4, 5, 6, 1, 0, 0, 0, 0]])
  dec = jnp.asarray([[0, 7, 8]])
  model = build_model(cfg)
  params = _init(cfg, {'encoder_input_tokens': enc, 'decoder_input_tokens': dec})
  a = model.apply({'params': params}, {'encoder_input_tokens': enc, 'decoder_input_tokens': dec})
  b = model.apply({'params': params},
                  {'encoder_input_tokens': enc_more_pad, 'decoder_input_tokens': dec})
  np.testing.assert_allclose(a, b, atol=1e-5)


def test_param_count_formula_matches_init():
  for cfg in (DecoderConfig(**DEC), DecoderConfig(**DEC, tie_embeddings=True,
                                                   position_embedding='learned', max_length=16)):
    params = _init(cfg, {'decoder_input_tokens': jnp.ones((1, 4), jnp.int32)})
    assert sum(x.size for x in jax.tree.leaves(params)) == cfg.num_params()


@pytest.mark.parametrize('kw', [dict(scan_layers=True), dict(scan_layers=False),
                                dict(position_embedding='learned', max_length=16),
                                dict(rope_scaling=RopeScaling(original_max_position_embeddings=4))])
def test_decoder_cached_steps_equal_full_forward(kw):
  """Prefill a buffer whose tail is junk, then feed the true tokens one per step at per-row positions:
  every step's logits equal the full forward's at that position."""
  cfg = DecoderConfig(**DEC, **kw)
  model = build_model(cfg)
  tokens = jax.random.randint(jax.random.key(0), (3, 10), 2, 97)
  params = _init(cfg, {'decoder_input_tokens': tokens})
  full = jax.jit(model.apply)({'params': params}, {'decoder_input_tokens': tokens})
  starts = np.array([3, 5, 4])  # each row's prompt length
  buffer = jnp.where(jnp.arange(10)[None] < starts[:, None], tokens, 0)
  logits, v = jax.jit(lambda b: model.apply({'params': params}, b, decode='prefill',
                                            mutable=['cache']))({'decoder_input_tokens': buffer})
  for r, s in enumerate(starts):
    np.testing.assert_allclose(logits[r, :s], full[r, :s], atol=1e-5)
  cache = v['cache']
  assert all(leaf.shape[0] == 3 for leaf in jax.tree.leaves(cache))  # rows first, scanned or not
  # One compiled step, as decoding.py runs it (op by op, each step took seconds).
  step = jax.jit(lambda cache, batch: model.apply({'params': params, 'cache': cache}, batch,
                                                  decode='step', mutable=['cache']))
  for t in range(5):
    pos = jnp.asarray(starts + t)
    step_tokens = jnp.take_along_axis(tokens, pos[:, None], axis=1)
    out, v = step(cache, {'decoder_input_tokens': step_tokens, 'decoder_positions': pos[:, None]})
    cache = v['cache']
    np.testing.assert_allclose(out[:, 0], full[jnp.arange(3), pos], atol=1e-5)


@pytest.mark.parametrize('scan', [True, False])
def test_encdec_cached_steps_equal_full_forward(scan):
  cfg = EncDecConfig(vocab_size=97, embed_dim=32, num_encoder_layers=2, num_decoder_layers=2,
                     num_heads=4, head_dim=8, mlp_dim=48, dtype='float32', scan_layers=scan)
  model = build_model(cfg)
  enc = jax.random.randint(jax.random.key(1), (2, 7), 2, 97).at[0, 5:].set(0)
  dec = jax.random.randint(jax.random.key(2), (2, 9), 2, 97)
  batch = {'encoder_input_tokens': enc, 'decoder_input_tokens': dec}
  params = _init(cfg, batch)
  full = jax.jit(model.apply)({'params': params}, batch)
  encoded = jax.jit(lambda b: model.apply({'params': params}, b, method=model.encode))(batch)
  logits, v = jax.jit(lambda b, e: model.apply({'params': params}, b, e, decode='prefill',
                                               mutable=['cache'], method=model.decode))(
      {**batch, 'decoder_input_tokens': dec.at[:, 1:].set(0)}, encoded)
  np.testing.assert_allclose(logits[:, 0], full[:, 0], atol=1e-5)
  cache = v['cache']
  step = jax.jit(lambda cache, batch: model.apply({'params': params, 'cache': cache}, batch, None,
                                                  decode='step', decode_length=9, mutable=['cache'],
                                                  method=model.decode))
  for p in range(1, 9):
    out, v = step(cache, {**batch, 'decoder_input_tokens': dec[:, p:p + 1],
                          'decoder_positions': jnp.full((2, 1), p)})
    cache = v['cache']
    np.testing.assert_allclose(out[:, 0], full[:, p], atol=1e-5)


def test_encdec_flops_scale_the_encoder_with_the_input_length():
  cfg = EncDecConfig(vocab_size=50, embed_dim=32, num_encoder_layers=2, num_decoder_layers=2,
                     num_heads=4, head_dim=8, mlp_dim=48)
  assert cfg.flops_per_token(64, inputs_len=64) == cfg.flops_per_token(64)
  enc_layer = 6 * (4 * 32 * 32 + 3 * 32 * 48)  # one encoder layer's matmul FLOPs per input token
  extra = cfg.flops_per_token(64, inputs_len=256) - cfg.flops_per_token(64)
  # 3 more input tokens per target token through 2 layers, plus longer encoder and cross attention.
  assert extra > 2 * 3 * enc_layer
  attn = 12 * 32 * (2 * 256 * 256 / 64 + 2 * (0.5 * 64 + 256)) - 12 * 32 * 64 * (2 + 2 * 1.5)
  assert extra == pytest.approx(2 * 3 * enc_layer + attn)
