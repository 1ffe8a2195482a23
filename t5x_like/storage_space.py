"""Room for checkpoints: a run refuses to start where not even one checkpoint fits, and a save that
fails because the storage is full ends the run with one line and exit 5 instead of a traceback.

Why both: a full disk is a routine failure on pods (a shared filesystem, a quota, a local SSD), and
Orbax's asynchronous save reports it only in background-thread log records while training goes on,
so every step after the failed save was trained for nothing and the traceback came at the next save.
The check before the compile reads the free space of a local MODEL_DIR (for gs:// and other URLs the
store says nothing usable and the check is skipped); the runtime side recognises the storage errors
of Python (ENOSPC, EDQUOT) and of tensorstore (which Orbax writes with), so it covers URLs too.
Nothing saved is touched: Orbax writes each step into a temporary folder, a failed one is never read,
and the next start removes it (checkpointing.Checkpointer: cleanup_tmp_directories).
"""
from __future__ import annotations

import errno
import math
import os
import re
import shutil
from typing import Callable, Optional

import jax
import numpy as np

# How a full store reads: Python's OSError text, and tensorstore's (e.g. `Failed to write 403105
# bytes to file 12: No space left on device [os_error_code='28']`, 122 being EDQUOT).
_FULL = re.compile(r"No space left on device|Disk quota exceeded|os_error_code='(28|122)'")
_STEP_IN_PATH = re.compile(r'[/\\](\d+)\.orbax-checkpoint-tmp')


class StorageFull(Exception):
  """No room for a checkpoint: before the run (the estimate does not fit) or during it (a save
  failed with a full store). The message is one line naming the folder, the step and the space."""


def mentions_storage_full(text: str) -> bool:
  """Whether `text` (an error's or a log record's) says the store is full or over quota."""
  return bool(_FULL.search(text))


def is_storage_full(error: BaseException) -> bool:
  """Whether `error`, or an error it was raised from, is a full disk or an exceeded quota."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if mentions_storage_full(str(error)):
      return True
    error = error.__cause__ or error.__context__
  return False


def free_bytes(directory) -> Optional[int]:
  """Bytes free to this user where `directory` is or will be made (its nearest existing folder);
  None for a URL (gs://...)."""
  if '://' in str(directory):
    return None
  path = os.path.abspath(str(directory))
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  try:
    return shutil.disk_usage(path).free
  except OSError:
    return None


def state_bytes(abstract_state) -> int:
  """The bytes of every array of a (global) state: what one checkpoint holds before compression."""
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(abstract_state))


def human(nbytes: float) -> str:
  units = ('B', 'KiB', 'MiB', 'GiB', 'TiB')
  i = 0
  while abs(nbytes) >= 1024 and i < len(units) - 1:
    nbytes, i = nbytes / 1024, i + 1
  return f'{nbytes:.0f} B' if i == 0 else f'{nbytes:.1f} {units[i]}'


def check_room(directory, checkpoint_bytes: int, keep: Optional[int],
               say: Callable[[str], None] = print) -> None:
  """Raises StorageFull when `directory` (a checkpoint folder, made or not) has less free space than
  one checkpoint; says a note when it has too little for the rotation: keeping `keep` needs room for
  keep + 1 while a new one is written, as Orbax deletes the oldest only after the newest is done.
  Called before the Checkpointer is made, whose start-up clean-up would outlive a set-up error."""
  free = free_bytes(directory)
  if free is None or checkpoint_bytes <= 0:
    return
  if free < checkpoint_bytes:
    raise StorageFull(
        f'{directory} has {human(free)} free, and one checkpoint of this run holds about '
        f'{human(checkpoint_bytes)} (parameters and optimizer state): free space there or choose '
        'another MODEL_DIR')
  if keep:
    # (On a local disk a step folder is renamed into place only once written: each one is whole.)
    existing = (sum(1 for p in os.listdir(directory) if p.isdigit())
                if os.path.isdir(directory) else 0)
    needed = max(1, keep + 1 - existing) * checkpoint_bytes
    if free < needed:
      say(f'note: {directory} has {human(free)} free, room for about '
          f'{math.floor(free / checkpoint_bytes)} more checkpoint(s) of {human(checkpoint_bytes)}; '
          f'keeping {keep} (TrainerConfig.keep_checkpoints) needs about {human(needed)} free: a save '
          'that does not fit will stop the run (exit 5), keeping the checkpoints saved before it')


def save_failed(error: BaseException, directory, step: Optional[int],
                latest: Optional[int]) -> StorageFull:
  """The one-line StorageFull for a save that `error` (a full store) stopped. The step is the one
  named in the failed temporary folder when the error says (an asynchronous save's error surfaces
  at a later call), else `step`."""
  m = _STEP_IN_PATH.search(str(error))
  failed = int(m.group(1)) if m else step
  free = free_bytes(directory)
  found = _FULL.search(str(error))
  reason = found.group(0) if found else 'storage full'
  if found and found.group(1):  # (tensorstore's errno)
    reason = 'No space left on device' if found.group(1) == '28' else 'Disk quota exceeded'
  kept = (f'the checkpoints saved before it are kept (latest: step {latest})' if latest is not None
          else 'no checkpoint was saved before it')
  return StorageFull(
      f'the checkpoint of step {failed} could not be written to {directory}: {reason}'
      f'{f" ({human(free)} free there)" if free is not None else ""}; {kept}. Free space there '
      '(or move MODEL_DIR), then run the same command again to resume')
