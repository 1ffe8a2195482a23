"""seqio glue (TensorFlow): task or mixture -> feature converter -> this host's shard -> global batches.

Imported only when a DataConfig names a seqio task (t5x_like/data.py decides), so a run that reads an
export (data_grain.py) never loads TensorFlow or seqio.

Each host reads its own disjoint shard (`seqio.ShardInfo(process_index, process_count)`) and batches
`batch_size / process_count` examples; `jax.make_array_from_process_local_data` assembles the global
batch with the batch sharding. The tf.data iterator is checkpointable, so the position in the data is
saved next to the model (one tf.train.Checkpoint per host, `TfIteratorCheckpoint`) and a run resumed on
the same number of hosts sees exactly the batches it would have.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
import seqio
import tensorflow as tf
from etils import epath

from t5x_like import vocabulary as vocabulary_lib
from t5x_like.host_batches import HostBatchIterator, PositionMismatch

# JAX owns the accelerators; tf.data runs on host CPUs only.
tf.config.set_visible_devices([], 'GPU')


def feature_converter(family: str, pack: bool) -> seqio.FeatureConverter:
  if family == 'decoder':
    # With an 'inputs' feature length this is a prefix LM (inputs are attended bidirectionally-free,
    # loss only on targets).
    return seqio.DecoderFeatureConverter(pack=pack)
  if family == 'encdec':
    return seqio.EncDecFeatureConverter(pack=pack)
  raise ValueError(f'no feature converter for model family {family!r}')


def converted_dataset(cfg, family: str, shard_index: int = 0, num_shards: int = 1) -> tf.data.Dataset:
  """One shard of the model-feature examples (after conversion and packing), unbatched."""
  name = cfg.name
  if cfg.cache_dir:
    seqio.add_global_cache_dirs([cfg.cache_dir])
  try:
    seqio.get_mixture_or_task(name)
  except ValueError as e:
    raise ValueError(f'DataConfig.mixture_or_task: no seqio task or mixture named {name!r}') from e
  return seqio.get_dataset(
      name, task_feature_lengths=dict(cfg.task_feature_lengths), dataset_split=cfg.split,
      shuffle=cfg.shuffle, num_epochs=cfg.num_epochs,
      feature_converter=feature_converter(family, cfg.pack),
      shard_info=seqio.ShardInfo(shard_index, num_shards), use_cached=cfg.use_cached,
      seed=cfg.seed)


def get_dataset(cfg, family: str) -> tf.data.Dataset:
  """This host's batched dataset of model features (numpy-convertible dicts)."""
  n_hosts = jax.process_count()
  if cfg.batch_size % n_hosts:
    raise ValueError(f'DataConfig.batch_size={cfg.batch_size} is not divisible by the '
                     f'{n_hosts} hosts')
  ds = converted_dataset(cfg, family, jax.process_index(), n_hosts)
  # Always whole batches: a partial last batch cannot be laid out over the data-parallel devices, and
  # hosts must agree on shapes. A finite (eval) split thus drops its last < batch_size examples.
  return ds.batch(cfg.batch_size // n_hosts, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def vocabulary(cfg) -> seqio.Vocabulary:
  return seqio.get_mixture_or_task(cfg.name).output_features['targets'].vocabulary


def save_vocabulary(cfg, directory: str) -> None:
  vocabulary_lib.save_vocabulary(vocabulary(cfg), directory)


class TfIteratorCheckpoint:
  """The data item of a checkpoint (see checkpointing.Checkpointer): each host's tf.data iterator."""

  def __init__(self, iterator):
    self.checkpoint = tf.train.Checkpoint(iterator=iterator)
    self.batch_shapes = {k: [list(v.shape), v.dtype.name] for k, v in iterator.element_spec.items()}

  def save_args(self) -> ocp.args.CheckpointArgs:
    return DataIteratorSave(self.checkpoint, self.batch_shapes)

  def restore_args(self) -> ocp.args.CheckpointArgs:
    return DataIteratorRestore(self.checkpoint, self.batch_shapes)

  def restored(self, value) -> None:
    del value  # the handler read the position into the iterator in place


class DataIterator(HostBatchIterator):
  """Host-local tf.data iterator -> global jax.Array batches; its position is checkpointable."""

  def __init__(self, dataset: tf.data.Dataset, sharding: Optional[jax.sharding.Sharding]):
    self._tf_iterator = iter(dataset)
    self._sharding = sharding
    self.checkpoint = TfIteratorCheckpoint(self._tf_iterator)
    self.element_spec = dataset.element_spec

  def next_local(self) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in next(self._tf_iterator).items()}

  def abstract_batch(self, global_batch: int) -> dict[str, jax.ShapeDtypeStruct]:
    return abstract_batch(self.element_spec, global_batch)


def abstract_batch(element_spec, global_batch: int) -> dict[str, jax.ShapeDtypeStruct]:
  """Global shapes of one batch, for building the model before any data is read."""
  if isinstance(element_spec, tf.data.Dataset):
    element_spec = element_spec.element_spec
  out = {}
  for k, spec in element_spec.items():
    shape = (global_batch,) + tuple(spec.shape[1:])
    out[k] = jax.ShapeDtypeStruct(shape, spec.dtype.as_numpy_dtype)
  return out


class DataIteratorHandler(ocp.CheckpointHandler):
  """Saves each host's tf.data iterator (blocking, so the position saved is the position now) and the
  shapes of the batches it hands out: an iterator restored into a pipeline with another batch size
  or feature lengths reads back without complaint, and fails at its first batch, after the compile."""

  def save(self, directory: epath.Path, args: 'DataIteratorSave'):
    path = directory / _host_dir()
    path.mkdir(parents=True, exist_ok=True)
    args.checkpoint.write(str(path / 'iterator'))
    (path / _SHAPES_FILE).write_text(json.dumps(args.batch_shapes))

  def restore(self, directory: epath.Path, args: 'DataIteratorRestore'):
    path = directory / _host_dir()
    if not (path / 'iterator.index').exists():
      found = sorted(p.name for p in directory.iterdir())
      raise PositionMismatch(f'{directory} has no data-iterator state for {_host_dir()} (found '
                             f'{found}): it was saved by another number of hosts')
    if (path / _SHAPES_FILE).exists():  # (saved before it was written: not compared)
      saved = json.loads((path / _SHAPES_FILE).read_text())
      if saved != args.batch_shapes:
        raise PositionMismatch(
            f'its data position (a tf.data iterator) was saved for per-host batches of '
            f'{_differing_shapes(saved, args.batch_shapes)}: it cannot be carried over to another '
            'batch size or feature lengths')
    args.checkpoint.read(str(path / 'iterator')).assert_consumed()


_SHAPES_FILE = 'batch_shapes.json'


def _differing_shapes(saved: dict, mine: dict) -> str:
  if set(saved) != set(mine):
    return f'features {sorted(saved)}, this run\'s have {sorted(mine)}'
  k = next(k for k in sorted(saved) if saved[k] != mine[k])
  return f'{k} {tuple(saved[k][0])} {saved[k][1]}, this run\'s are {tuple(mine[k][0])} {mine[k][1]}'


def _host_dir() -> str:
  return f'host_{jax.process_index()}_of_{jax.process_count()}'


@ocp.args.register_with_handler(DataIteratorHandler, for_save=True)
@dataclasses.dataclass
class DataIteratorSave(ocp.args.CheckpointArgs):
  checkpoint: tf.train.Checkpoint
  batch_shapes: dict  # {feature: [per-host shape, dtype]}


@ocp.args.register_with_handler(DataIteratorHandler, for_restore=True)
@dataclasses.dataclass
class DataIteratorRestore(ocp.args.CheckpointArgs):
  checkpoint: tf.train.Checkpoint
  batch_shapes: dict
