"""What the trainer reads, and from where: a DataConfig names either a seqio task or mixture, read
through tf.data (data_seqio.py, imports TensorFlow and seqio), or a directory written by
`python -m tasks export` (data_grain.py: Grain over ArrayRecord, no TensorFlow). This module
imports neither; it picks the path and hands out an iterator with one interface:

  iterator.abstract_batch(global_batch)  global shapes of a batch (before any compile)
  next(iterator)                         the next global batch (jax.Arrays on the batch sharding)
  iterator.local_batches(), to_global()  this host's batches one by one (evaluation)
  iterator.checkpoint                    the data item of a checkpoint (see checkpointing.py)
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Optional

import gin


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DataConfig:
  """What to read and how: a seqio task or mixture (a registered name, or the object a task builder
  returns) or an export dir, the feature lengths, the global batch size and the shuffle seed."""
  mixture_or_task: Any = None
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
  # A directory written by `python -m tasks export`; this config then reads EXPORT_DIR/<split> with
  # Grain (no TensorFlow) and names no seqio task. See docs/DATA.md.
  export_dir: Optional[str] = None
  # Debugging aid of the export path: each host appends the hashes of the rows it feeds, per global
  # batch, to DIR/host<i>of<n>.jsonl (the elastic-resume test compares them).
  batch_hash_dir: Optional[str] = None

  def __post_init__(self):
    if (self.mixture_or_task is None) == (self.export_dir is None):
      raise ValueError('DataConfig: set exactly one of mixture_or_task (a seqio task) and export_dir '
                       '(a directory written by `python -m tasks export`)')
    if not isinstance(self.batch_size, int) or self.batch_size < 1:
      raise ValueError(f'DataConfig.batch_size={self.batch_size!r} must be an integer >= 1')
    if isinstance(self.task_feature_lengths, Mapping):
      for feature, length in self.task_feature_lengths.items():
        if not isinstance(length, int) or length < 1:
          raise ValueError(f'DataConfig.task_feature_lengths[{feature!r}]={length!r} must be an '
                           'integer >= 1')

  @property
  def name(self) -> str:
    if self.export_dir is not None:
      from t5x_like import data_grain
      return data_grain.export_name(self)
    m = self.mixture_or_task
    return m if isinstance(m, str) else m.name


def open_iterator(cfg: DataConfig, family: str, sharding, *, vocab_size: Optional[int] = None,
                  num_batches: Optional[int] = None):
  """This host's iterator over `cfg` for a model of `family`. On the export path the export's
  meta.json is checked against the config (feature lengths, packing, family, vocabulary size, enough
  examples for `num_batches`) here, before anything is compiled."""
  if cfg.export_dir is not None:
    from t5x_like import data_grain
    return data_grain.ExportIterator(cfg, family, sharding, vocab_size=vocab_size,
                                     num_batches=num_batches)
  from t5x_like import data_seqio
  return data_seqio.DataIterator(data_seqio.get_dataset(cfg, family), sharding)


def get_dataset(cfg: DataConfig, family: str):
  """The seqio path's batched tf.data.Dataset for this host (imports TensorFlow)."""
  from t5x_like import data_seqio
  return data_seqio.get_dataset(cfg, family)


def save_vocabulary(cfg: DataConfig, directory: str) -> None:
  """Writes the data's vocabulary to `directory` (spm.model + vocabulary.json, see tasks/vocab.py)."""
  if cfg.export_dir is not None:
    from t5x_like import data_grain
    data_grain.copy_vocabulary(cfg, directory)
    return
  from t5x_like import data_seqio
  data_seqio.save_vocabulary(cfg, os.fspath(directory))
