"""What both input paths share: this host's numpy batches -> global jax.Array batches.

A subclass reads this host's rows in `next_local` (raising StopIteration at the end of a finite split)
and sets `self._sharding` (None: hand out host-local numpy, e.g. for tools that never shard). Its
position, saved with each checkpoint, raises PositionMismatch when restored into a run it does not fit.
"""
from __future__ import annotations

import itertools
from typing import Any, Iterator, Optional

import jax
import numpy as np


class PositionMismatch(ValueError):
  """The data position saved with a checkpoint is one this run's data cannot take up (another
  export, batch shape or number of hosts): the checkpoint is whole, the run differs from it."""


class HostBatchIterator:
  _sharding: Optional[jax.sharding.Sharding] = None

  def next_local(self) -> dict[str, np.ndarray]:
    raise NotImplementedError

  def __iter__(self) -> Iterator[dict[str, Any]]:
    return self

  def __next__(self) -> dict[str, Any]:
    return self.to_global(self.next_local())

  def skip(self, n: int) -> None:
    """Reads and drops this host's next `n` batches (TrainerConfig.skip_data)."""
    read = sum(1 for _ in itertools.islice(self.local_batches(), n))
    if read < n:
      raise ValueError(f'the data ended after {read} of the {n} batches to skip')

  def local_batches(self) -> Iterator[dict[str, np.ndarray]]:
    while True:
      try:
        yield self.next_local()
      except StopIteration:
        return

  def to_global(self, local: dict[str, np.ndarray]) -> dict[str, Any]:
    if self._sharding is None:
      return local
    return {k: jax.make_array_from_process_local_data(self._sharding, v) for k, v in local.items()}
