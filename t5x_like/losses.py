"""Token cross-entropy with z-loss and label smoothing, and T5X-style loss normalisation.

The loss is returned as a SUM over tokens together with the normalising denominator, so gradient
accumulation over microbatches divides once by the whole batch's denominator and equals the
full-batch gradient exactly.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Union

import gin
import jax
import jax.numpy as jnp


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LossConfig:
  # PaLM/T5X auxiliary loss z_loss * log(Z)^2: keeps the softmax normaliser near 1, which stabilises bf16.
  z_loss: float = 1e-4
  label_smoothing: float = 0.0
  # 'num_real_target_tokens' (mean over non-padding targets), 'num_total_target_tokens' (mean over all
  # target positions, padding included), or a number: divide the summed loss by this constant, as T5X
  # does for Mesh-TF compatibility (e.g. batch * target length).
  normalizing_factor: Union[str, float] = 'num_real_target_tokens'
  # Training loss from the final hidden states and the output kernel (`fused_token_losses`): the fp32
  # logits and their gradient exist one sequence chunk at a time and never in full. False: the model's
  # logits and `token_losses` (autodiff).
  fused: bool = True
  # Sequence positions per chunk of the fused loss; 0: the whole sequence in one chunk. Chunks lower the
  # peak memory of the logits (batch x chunk x vocab fp32) at the cost of one more vocabulary-sized
  # matmul (the backward pass recomputes each chunk's logits).
  chunk_size: int = 0

  def __post_init__(self):
    if self.chunk_size < 0:
      raise ValueError(f'LossConfig.chunk_size={self.chunk_size} must be >= 0')
    if isinstance(self.normalizing_factor, str) and self.normalizing_factor not in (
        'num_real_target_tokens', 'num_total_target_tokens'):
      raise ValueError(f'LossConfig.normalizing_factor={self.normalizing_factor!r}; use '
                       "'num_real_target_tokens', 'num_total_target_tokens' or a number")


def _loss_from_parts(log_z, target_logit, sum_logits, vocab: int, z_loss: float,
                     label_smoothing: float):
  nll = log_z - target_logit
  if label_smoothing:
    confidence = 1.0 - label_smoothing
    low = label_smoothing / (vocab - 1)
    # -sum_v q_v log p_v with q = onehot*confidence + low elsewhere, minus its entropy (T5X's constant)
    # so a perfect prediction scores 0.
    sum_neg_logp = vocab * log_z - sum_logits
    entropy = -(confidence * jnp.log(confidence) + (vocab - 1) * low * jnp.log(low + 1e-20))
    loss = (confidence - low) * nll + low * sum_neg_logp - entropy
  else:
    loss = nll
  z = z_loss * jnp.square(log_z)
  return loss + z, z


def token_losses(logits: jax.Array, targets: jax.Array, *, z_loss: float, label_smoothing: float):
  """Per-token (loss, z_loss term). Smoothed targets are written out analytically: no one-hot of V."""
  vocab = logits.shape[-1]
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  sum_logits = jnp.sum(logits, axis=-1) if label_smoothing else None
  return _loss_from_parts(log_z, target_logit, sum_logits, vocab, z_loss, label_smoothing)


def _chunk_forward(x, kernel, targets, z_loss, label_smoothing, return_logits=False):
  """One chunk: x [b, c, d], kernel [d, V] (compute dtype) -> loss, z, correct, log_z [b, c] fp32
  (and the fp32 logits with return_logits)."""
  logits = jnp.einsum('bcd,dv->bcv', x, kernel, preferred_element_type=jnp.float32)
  top = jnp.max(logits, axis=-1)
  log_z = top + jnp.log(jnp.sum(jnp.exp(logits - top[..., None]), axis=-1))
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  sum_logits = jnp.sum(logits, axis=-1) if label_smoothing else None
  loss, z = _loss_from_parts(log_z, target_logit, sum_logits, kernel.shape[-1], z_loss,
                             label_smoothing)
  # The target is the argmax when its logit is the maximum, which the normaliser needed anyway: accuracy
  # without a second pass over the logits (ties, measure zero in practice, count as correct).
  correct = (target_logit >= top).astype(jnp.float32)
  if return_logits:
    return loss, z, correct, log_z, logits
  return loss, z, correct, log_z


def _chunk_backward(x, kernel, targets, log_z, g_loss, g_z, z_loss, label_smoothing, logits=None):
  """d(sum g_loss*loss + g_z*z)/d(x, kernel) for one chunk; the fp32 logits are recomputed unless
  given."""
  vocab = kernel.shape[-1]
  if logits is None:
    logits = jnp.einsum('bcd,dv->bcv', x, kernel, preferred_element_type=jnp.float32)
  probs = jnp.exp(logits - log_z[..., None])
  if label_smoothing:
    confidence = 1.0 - label_smoothing
    low = label_smoothing / (vocab - 1)
    on_target, const = confidence - low, low
  else:
    on_target, const, low = 1.0, 0.0, 0.0
  # loss = on_target*(log_z - t) + low*(V*log_z - sum logits) - H + z_loss*log_z^2;  z = z_loss*log_z^2
  dz = 2.0 * z_loss * log_z * (g_loss + g_z)
  p_coef = g_loss * (on_target + low * vocab) + dz
  onehot = jnp.arange(vocab, dtype=targets.dtype) == targets[..., None]
  dlogits = (probs * p_coef[..., None] - g_loss[..., None] * (
      on_target * onehot.astype(jnp.float32) + const)).astype(x.dtype)
  dx = jnp.einsum('bcv,dv->bcd', dlogits, kernel, preferred_element_type=jnp.float32)
  dkernel = jnp.einsum('bcd,bcv->dv', x, dlogits, preferred_element_type=jnp.float32)
  return dx.astype(x.dtype), dkernel


def _chunks(a, n):
  """[b, l, ...] -> [n, b, l/n, ...] (batch stays axis 1 of each chunk: its sharding is kept)."""
  return jnp.moveaxis(a.reshape((a.shape[0], n, a.shape[1] // n) + a.shape[2:]), 1, 0)


def _unchunk(a):
  a = jnp.moveaxis(a, 0, 1)
  return a.reshape((a.shape[0], a.shape[1] * a.shape[2]) + a.shape[3:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _fused(hidden, kernel, targets, z_loss, label_smoothing, num_chunks):
  return _fused_fwd(hidden, kernel, targets, z_loss, label_smoothing, num_chunks)[0]


def _fused_fwd(hidden, kernel, targets, z_loss, label_smoothing, num_chunks):
  fwd = functools.partial(_chunk_forward, z_loss=z_loss, label_smoothing=label_smoothing)
  if num_chunks == 1:
    # One chunk: keep the fp32 logits for the backward pass (the memory autodiff would use) instead of
    # a fourth vocabulary-sized matmul.
    loss, z, correct, log_z, logits = fwd(hidden, kernel, targets, return_logits=True)
    return (loss, z, correct), (hidden, kernel, targets, log_z, logits)
  out = jax.lax.map(lambda xs: fwd(xs[0], kernel, xs[1]), (_chunks(hidden, num_chunks),
                                                          _chunks(targets, num_chunks)))
  loss, z, correct, log_z = (_unchunk(o) for o in out)
  return (loss, z, correct), (hidden, kernel, targets, log_z)


def _fused_bwd(z_loss, label_smoothing, num_chunks, res, g):
  g_loss, g_z, _ = g
  bwd = functools.partial(_chunk_backward, z_loss=z_loss, label_smoothing=label_smoothing)
  if num_chunks == 1:
    hidden, kernel, targets, log_z, logits = res
    dx, dkernel = bwd(hidden, kernel, targets, log_z, g_loss, g_z, logits=logits)
  else:
    hidden, kernel, targets, log_z = res
    def body(acc, xs):
      dx, dk = bwd(xs[0], kernel, *xs[1:])
      return acc + dk, dx
    dkernel, dx = jax.lax.scan(
        body, jnp.zeros(kernel.shape, jnp.float32),
        tuple(_chunks(a, num_chunks) for a in (hidden, targets, log_z, g_loss, g_z)))
    dx = _unchunk(dx)
  return dx, dkernel.astype(kernel.dtype), None


_fused.defvjp(_fused_fwd, _fused_bwd)


def fused_token_losses(hidden: jax.Array, kernel: jax.Array, targets: jax.Array, *, z_loss: float,
                       label_smoothing: float, chunk_size: int = 0):
  """Per-token (loss, z_loss term, correct) of logits = hidden @ kernel, without materialising them.

  hidden [batch, length, d] and kernel [d, vocab] in the compute dtype; the logits are accumulated in
  fp32 one chunk of `chunk_size` positions at a time (0: one chunk), and the backward pass writes the
  logits' gradient straight into the compute dtype: no bf16 logits converted to fp32, no argmax pass
  (accuracy comes from the maximum the normaliser needs), no fp32 copy of the logits' gradient.
  Equal to `token_losses(hidden @ kernel, ...)` up to rounding of the logits.
  """
  length = hidden.shape[1]
  chunk = chunk_size or length
  if length % chunk:
    raise ValueError(f'LossConfig.chunk_size={chunk_size} does not divide the sequence length {length}')
  return _fused(hidden, kernel.astype(hidden.dtype), targets, float(z_loss), float(label_smoothing),
                length // chunk)


def normalizer(weights: jax.Array, cfg: LossConfig) -> jax.Array:
  if cfg.normalizing_factor == 'num_real_target_tokens':
    return jnp.sum(weights)
  if cfg.normalizing_factor == 'num_total_target_tokens':
    return jnp.asarray(weights.size, jnp.float32)
  return jnp.asarray(float(cfg.normalizing_factor), jnp.float32)
