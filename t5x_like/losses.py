"""Token cross-entropy with z-loss and label smoothing, and T5X-style loss normalisation.

The loss is returned as a SUM over tokens together with the normalising denominator, so gradient
accumulation over microbatches divides once by the whole batch's denominator and equals the
full-batch gradient exactly.
"""
from __future__ import annotations

import dataclasses
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

  def __post_init__(self):
    if isinstance(self.normalizing_factor, str) and self.normalizing_factor not in (
        'num_real_target_tokens', 'num_total_target_tokens'):
      raise ValueError(f'LossConfig.normalizing_factor={self.normalizing_factor!r}; use '
                       "'num_real_target_tokens', 'num_total_target_tokens' or a number")


def token_losses(logits: jax.Array, targets: jax.Array, *, z_loss: float, label_smoothing: float):
  """Per-token (loss, z_loss term). Smoothed targets are written out analytically: no one-hot of V."""
  vocab = logits.shape[-1]
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  nll = log_z - target_logit
  if label_smoothing:
    confidence = 1.0 - label_smoothing
    low = label_smoothing / (vocab - 1)
    # -sum_v q_v log p_v with q = onehot*confidence + low elsewhere, minus its entropy (T5X's constant)
    # so a perfect prediction scores 0.
    sum_neg_logp = vocab * log_z - jnp.sum(logits, axis=-1)
    entropy = -(confidence * jnp.log(confidence) + (vocab - 1) * low * jnp.log(low + 1e-20))
    loss = (confidence - low) * nll + low * sum_neg_logp - entropy
  else:
    loss = nll
  z = z_loss * jnp.square(log_z)
  return loss + z, z


def normalizer(weights: jax.Array, cfg: LossConfig) -> jax.Array:
  if cfg.normalizing_factor == 'num_real_target_tokens':
    return jnp.sum(weights)
  if cfg.normalizing_factor == 'num_total_target_tokens':
    return jnp.asarray(weights.size, jnp.float32)
  return jnp.asarray(float(cfg.normalizing_factor), jnp.float32)
