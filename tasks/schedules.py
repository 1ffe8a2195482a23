"""Language sampling per training sequence, with stage schedules (Schäfer et al. 2024).

A schedule `0.1_0.9` is equal-length stages, each with its own probability p of the "other"
language(s) (p_clone, or p_l2 for real languages): stage s covers the sequences with global index
i where s == i * n_stages // total (total = train_steps * batch_size). The choice for sequence i
is a stateless function of (seed, i), so it is deterministic and survives an exact resume from the
checkpointed tf.data iterator.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import tensorflow as tf


def parse_schedule(schedule: Union[str, float, Sequence[float]], what: str) -> list[float]:
  """'0.05_0.65_0.65_0.65' -> [0.05, 0.65, 0.65, 0.65]."""
  if isinstance(schedule, (int, float)):
    values = [float(schedule)]
  elif isinstance(schedule, str):
    try:
      values = [float(x) for x in schedule.split('_')]
    except ValueError:
      raise ValueError(f'{what}: schedule {schedule!r} is not written like 0.1_0.9') from None
  else:
    values = [float(x) for x in schedule]
  if not values or any(not 0 <= v <= 1 for v in values):
    raise ValueError(f'{what}: schedule values must be probabilities in [0, 1], got {values}')
  return values


def stage_probs(p_other: Sequence[float], other_weights: Sequence[float]) -> np.ndarray:
  """[n_stages, 1 + n_other]: language 0 gets 1 - p, the others share p by their weights."""
  w = np.asarray(other_weights, np.float64)
  w = w / w.sum()
  return np.array([[1 - p] + list(p * w) for p in p_other])


def check_probs(probs: np.ndarray, what: str) -> np.ndarray:
  probs = np.asarray(probs, np.float64)
  if probs.ndim != 2 or np.any(probs < 0) or not np.allclose(probs.sum(1), 1, atol=1e-6):
    raise ValueError(f'{what}: language probabilities must be non-negative and sum to 1 per '
                     f'stage, got {probs.tolist()}')
  return probs


def stage_of(index: tf.Tensor, n_stages: int, total: Optional[int]) -> tf.Tensor:
  if n_stages == 1:
    return tf.zeros_like(index)
  return tf.minimum(index * n_stages // total, n_stages - 1)


def sample_language(index: tf.Tensor, probs: np.ndarray, total: Optional[int], seed: int
                    ) -> tf.Tensor:
  """The language (int32) of sequence `index` (int64), drawn from its stage's probabilities."""
  cdf = tf.constant(np.cumsum(probs, axis=1), tf.float32)
  stage = stage_of(index, probs.shape[0], total)
  u = tf.random.stateless_uniform([], tf.stack([tf.constant(seed, tf.int64), index]))
  row = tf.gather(cdf, stage)
  # The first language whose cumulative probability exceeds u; min() guards float round-off.
  lang = tf.reduce_sum(tf.cast(row <= u, tf.int32))
  return tf.minimum(lang, probs.shape[1] - 1)


def language_choices(probs: np.ndarray, total: Optional[int], seed: int) -> tf.data.Dataset:
  """The infinite dataset of languages for sequences 0, 1, 2, ... (tf.int64, for choose_from)."""
  return tf.data.Dataset.range(np.iinfo(np.int64).max).map(
      lambda i: tf.cast(sample_language(i, probs, total, seed), tf.int64))
