"""seqio glue: task or mixture -> feature converter -> this host's shard -> global jax.Array batches.

Each host reads its own disjoint shard (`seqio.ShardInfo(process_index, process_count)`) and batches
`batch_size / process_count` examples; `jax.make_array_from_process_local_data` assembles the global
batch with the batch sharding. The tf.data iterator is checkpointable, so the position in the data is
saved next to the model (see checkpointing.py) and a resumed run sees exactly the batches it would have.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Mapping, Optional, Union

import gin
import jax
import numpy as np
import seqio
import tensorflow as tf

# JAX owns the accelerators; tf.data runs on host CPUs only.
tf.config.set_visible_devices([], 'GPU')

MixtureOrTask = Union[str, seqio.Task, seqio.Mixture]


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DataConfig:
  """What to read and how: a seqio task or mixture (a registered name, or the object a task builder
  returns), the feature lengths, the global batch size and the shuffle seed."""
  mixture_or_task: MixtureOrTask = gin.REQUIRED
  task_feature_lengths: Mapping[str, int] = gin.REQUIRED
  batch_size: int = 16
  split: str = 'train'
  shuffle: bool = True
  seed: Optional[int] = 0
  pack: bool = True
  use_cached: bool = False
  # Where `python -m tasks cache` (seqio + Apache Beam) wrote the preprocessed task; see docs/DATA.md.
  cache_dir: Optional[str] = None
  # None repeats forever (training); 1 reads the split once (evaluation).
  num_epochs: Optional[int] = None

  @property
  def name(self) -> str:
    m = self.mixture_or_task
    return m if isinstance(m, str) else m.name


def feature_converter(family: str, pack: bool) -> seqio.FeatureConverter:
  if family == 'decoder':
    # With an 'inputs' feature length this is a prefix LM (inputs are attended bidirectionally-free,
    # loss only on targets).
    return seqio.DecoderFeatureConverter(pack=pack)
  if family == 'encdec':
    return seqio.EncDecFeatureConverter(pack=pack)
  raise ValueError(f'no feature converter for model family {family!r}')


def get_dataset(cfg: DataConfig, family: str) -> tf.data.Dataset:
  """This host's batched dataset of model features (numpy-convertible dicts)."""
  n_hosts = jax.process_count()
  if cfg.batch_size % n_hosts:
    raise ValueError(f'DataConfig.batch_size={cfg.batch_size} is not divisible by the '
                     f'{n_hosts} hosts')
  name = cfg.name
  if cfg.cache_dir:
    seqio.add_global_cache_dirs([cfg.cache_dir])
  try:
    seqio.get_mixture_or_task(name)
  except ValueError as e:
    raise ValueError(f'DataConfig.mixture_or_task: no seqio task or mixture named {name!r}') from e
  ds = seqio.get_dataset(
      name, task_feature_lengths=dict(cfg.task_feature_lengths), dataset_split=cfg.split,
      shuffle=cfg.shuffle, num_epochs=cfg.num_epochs,
      feature_converter=feature_converter(family, cfg.pack),
      shard_info=seqio.ShardInfo(jax.process_index(), n_hosts), use_cached=cfg.use_cached,
      seed=cfg.seed)
  # Always whole batches: a partial last batch cannot be laid out over the data-parallel devices, and
  # hosts must agree on shapes. A finite (eval) split thus drops its last < batch_size examples.
  return ds.batch(cfg.batch_size // n_hosts, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


class DataIterator:
  """Host-local tf.data iterator -> global jax.Array batches; its position is checkpointable."""

  def __init__(self, dataset: tf.data.Dataset, sharding: Optional[jax.sharding.Sharding]):
    self._tf_iterator = iter(dataset)
    self._sharding = sharding
    self.checkpoint = tf.train.Checkpoint(iterator=self._tf_iterator)
    self.element_spec = dataset.element_spec

  def __iter__(self) -> Iterator[dict[str, Any]]:
    return self

  def next_local(self) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in next(self._tf_iterator).items()}

  def local_batches(self) -> Iterator[dict[str, np.ndarray]]:
    while True:
      try:
        yield self.next_local()
      except StopIteration:
        return

  def to_global(self, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    if self._sharding is None:
      return local
    return {k: jax.make_array_from_process_local_data(self._sharding, v) for k, v in local.items()}

  def __next__(self) -> dict[str, jax.Array]:
    return self.to_global(self.next_local())


def abstract_batch(dataset: tf.data.Dataset, global_batch: int) -> dict[str, jax.ShapeDtypeStruct]:
  """Global shapes of one batch, for building the model before any data is read."""
  out = {}
  for k, spec in dataset.element_spec.items():
    shape = (global_batch,) + tuple(spec.shape[1:])
    out[k] = jax.ShapeDtypeStruct(shape, spec.dtype.as_numpy_dtype)
  return out
