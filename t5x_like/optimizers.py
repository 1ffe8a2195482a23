"""optax AdamW with learning-rate schedules, gradient clipping and a weight-decay mask."""
from __future__ import annotations

import dataclasses
from typing import Optional

import gin
import jax
import jax.numpy as jnp
import optax


@gin.configurable
@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  learning_rate: float = 1e-3
  # 'cosine': linear warmup, then cosine decay to end_lr_ratio * learning_rate at decay_steps.
  # 'rsqrt':  linear warmup, then learning_rate * sqrt(warmup_steps / step) (T5's inverse square root).
  # 'linear': linear warmup, then linear decay to end_lr_ratio * learning_rate.
  # 'constant': linear warmup, then constant.
  schedule: str = 'cosine'
  warmup_steps: int = 100
  decay_steps: Optional[int] = None  # None: the run's total train steps
  end_lr_ratio: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 0.1
  clip_grad_norm: Optional[float] = 1.0

  def __post_init__(self):
    if self.schedule not in ('cosine', 'rsqrt', 'linear', 'constant'):
      raise ValueError(f"OptimizerConfig.schedule={self.schedule!r}; use 'cosine', 'rsqrt', "
                       "'linear' or 'constant'")
    if self.schedule == 'rsqrt' and self.warmup_steps < 1:
      raise ValueError('OptimizerConfig.schedule=rsqrt needs warmup_steps >= 1')
    # A sign or a range slip (a negative rate is gradient ascent) would train without complaint.
    for name, ok, rule in (
        ('learning_rate', self.learning_rate >= 0, '>= 0'),
        ('warmup_steps', self.warmup_steps >= 0, '>= 0'),
        ('decay_steps', self.decay_steps is None or self.decay_steps >= 1, 'None or >= 1'),
        ('end_lr_ratio', self.end_lr_ratio >= 0, '>= 0'),
        ('b1', 0 <= self.b1 < 1, 'in [0, 1)'), ('b2', 0 <= self.b2 < 1, 'in [0, 1)'),
        ('eps', self.eps > 0, '> 0'), ('weight_decay', self.weight_decay >= 0, '>= 0'),
        ('clip_grad_norm', self.clip_grad_norm is None or self.clip_grad_norm > 0, 'None or > 0')):
      if not ok:
        raise ValueError(f'OptimizerConfig.{name}={getattr(self, name)!r} must be {rule}')


def make_schedule(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
  lr, warm = cfg.learning_rate, cfg.warmup_steps
  decay = (cfg.decay_steps or total_steps) - warm
  end = lr * cfg.end_lr_ratio
  if cfg.schedule == 'rsqrt':
    def rsqrt(step):
      step = jnp.asarray(step, jnp.float32)
      return lr * jnp.minimum(step / warm, 1.0) * jnp.sqrt(warm / jnp.maximum(step, warm))
    return rsqrt
  after = {
      'cosine': lambda: optax.cosine_decay_schedule(lr, max(decay, 1), alpha=cfg.end_lr_ratio),
      'linear': lambda: optax.linear_schedule(lr, end, max(decay, 1)),
      'constant': lambda: optax.constant_schedule(lr),
  }[cfg.schedule]()
  if warm == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), after], [warm])


DECAYED_PARAM_NAMES = ('kernel', 'embedding', 'position_embedding')


def _decay_mask(params):
  # Decay matrices only, by name rather than rank: a scanned norm scale is 2-D ([layers, embed]) but is
  # still a norm scale (GPT-3/Llama recipes exclude norms and biases).
  def decayed(path, _):
    return getattr(path[-1], 'key', None) in DECAYED_PARAM_NAMES
  return jax.tree_util.tree_map_with_path(decayed, params)


def make_optimizer(cfg: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
  parts = []
  if cfg.clip_grad_norm:
    parts.append(optax.clip_by_global_norm(cfg.clip_grad_norm))
  parts.append(optax.adamw(make_schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                           weight_decay=cfg.weight_decay, mask=_decay_mask))
  return optax.chain(*parts)
