"""The fused (chunked, custom-gradient) loss equals the plain logits-then-cross-entropy one: values,
accuracy and gradients, for every model family and head, with chunks, z-loss and label smoothing."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_like import losses, trainer
from t5x_like.models import DecoderConfig, EncDecConfig, build_model


def _plain(hidden, kernel, targets, weights, z_loss, label_smoothing):
  logits = jnp.einsum('bld,dv->blv', hidden, kernel)
  loss, z = losses.token_losses(logits, targets, z_loss=z_loss, label_smoothing=label_smoothing)
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  return jnp.sum(loss * weights), (jnp.sum(z * weights), jnp.sum(correct * weights))


def _fused(hidden, kernel, targets, weights, z_loss, label_smoothing, chunk_size):
  loss, z, correct = losses.fused_token_losses(hidden, kernel, targets, z_loss=z_loss,
                                               label_smoothing=label_smoothing,
                                               chunk_size=chunk_size)
  return jnp.sum(loss * weights), (jnp.sum(z * weights), jnp.sum(correct * weights))


@pytest.mark.parametrize('chunk_size', [0, 4])
@pytest.mark.parametrize('z_loss,label_smoothing', [(0.0, 0.0), (1e-2, 0.0), (1e-3, 0.1)])
def test_fused_loss_and_gradient_equal_the_plain_ones(chunk_size, z_loss, label_smoothing):
  k = jax.random.split(jax.random.key(0), 4)
  hidden = jax.random.normal(k[0], (3, 8, 16))
  kernel = jax.random.normal(k[1], (16, 50)) * 0.5
  targets = jax.random.randint(k[2], (3, 8), 0, 50)
  # Make some targets the argmax so accuracy is neither 0 nor 1.
  logits = jnp.einsum('bld,dv->blv', hidden, kernel)
  targets = targets.at[:, ::2].set(jnp.argmax(logits, -1)[:, ::2])
  weights = (jax.random.uniform(k[3], (3, 8)) > 0.2).astype(jnp.float32)
  plain = jax.value_and_grad(_plain, argnums=(0, 1), has_aux=True)
  fused = jax.value_and_grad(_fused, argnums=(0, 1), has_aux=True)
  (lp, (zp, cp)), gp = plain(hidden, kernel, targets, weights, z_loss, label_smoothing)
  (lf, (zf, cf)), gf = jax.jit(fused, static_argnums=(4, 5, 6))(
      hidden, kernel, targets, weights, z_loss, label_smoothing, chunk_size)
  np.testing.assert_allclose(lf, lp, rtol=1e-5)
  np.testing.assert_allclose(zf, zp, rtol=1e-5, atol=1e-7)
  assert 0 < float(cp) < float(jnp.sum(weights))
  assert float(cf) == float(cp)
  for a, b in zip(gf, gp):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_fused_loss_in_bf16_is_as_close_as_bf16_logits_allow():
  k = jax.random.split(jax.random.key(1), 3)
  hidden = jax.random.normal(k[0], (2, 8, 32))
  kernel = jax.random.normal(k[1], (32, 64)) * 0.3
  targets = jax.random.randint(k[2], (2, 8), 0, 64)
  weights = jnp.ones((2, 8))
  ref, _ = jax.grad(_plain, argnums=(0, 1), has_aux=True)(hidden, kernel, targets, weights, 1e-4, 0.0)
  got, _ = jax.grad(_fused, argnums=(0, 1), has_aux=True)(
      hidden.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), targets, weights, 1e-4, 0.0, 4)
  assert got[0].dtype == jnp.bfloat16 and got[1].dtype == jnp.bfloat16
  for a, b in zip(got, ref):
    err = float(jnp.max(jnp.abs(a.astype(jnp.float32) - b)))
    assert err < 0.02 * float(jnp.max(jnp.abs(b))), err


def test_chunk_size_that_does_not_divide_the_length_is_refused():
  with pytest.raises(ValueError, match='chunk_size=3 does not divide the sequence length 8'):
    losses.fused_token_losses(jnp.ones((1, 8, 4)), jnp.ones((4, 10)), jnp.zeros((1, 8), jnp.int32),
                              z_loss=0.0, label_smoothing=0.0, chunk_size=3)


def _batch(family, rng):
  b = {'decoder_input_tokens': rng.integers(1, 61, (2, 8)),
       'decoder_target_tokens': rng.integers(1, 61, (2, 8)),
       'decoder_loss_weights': (rng.random((2, 8)) > 0.1).astype(np.float32)}
  if family == 'encdec':
    b['encoder_input_tokens'] = rng.integers(1, 61, (2, 6))
  return {k: jnp.asarray(v) for k, v in b.items()}


@pytest.mark.parametrize('cfg', [
    DecoderConfig(vocab_size=61, embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=2,
                  head_dim=8, mlp_dim=24, dtype='float32'),
    DecoderConfig(vocab_size=61, embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=2,
                  head_dim=8, mlp_dim=24, dtype='float32', tie_embeddings=True),
    EncDecConfig(vocab_size=61, embed_dim=16, num_encoder_layers=1, num_decoder_layers=1,
                 num_heads=2, head_dim=8, mlp_dim=24, dtype='float32', tie_embeddings=True),
], ids=['decoder', 'decoder_tied', 'encdec_tied'])
def test_trainer_stats_and_gradients_fused_equal_plain(cfg):
  model = build_model(cfg)
  batch = _batch(cfg.family, np.random.default_rng(0))
  params = nn.unbox(model.init(jax.random.key(0), batch))['params']
  grads = {}
  for fused in (False, True):
    loss_cfg = losses.LossConfig(z_loss=1e-3, label_smoothing=0.1, fused=fused,
                                 chunk_size=4 if fused else 0)
    f = functools.partial(trainer._token_stats, model, loss_cfg=loss_cfg, deterministic=True)
    grads[fused] = jax.grad(f, has_aux=True)(params, batch, None)
  (g_plain, s_plain), (g_fused, s_fused) = grads[False], grads[True]
  for key in s_plain:
    np.testing.assert_allclose(s_fused[key], s_plain[key], rtol=1e-5, err_msg=key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g_fused, g_plain)
