"""One writer per model dir: MODEL_DIR/.writer.lock, locked while a trainer's checkpointer is open.

Two trainers on one MODEL_DIR (the same command started twice, a rerun while the first still saves,
a launcher killed without its trainer) write the same step folders, and the second one's start
deletes the first one's save in flight: Orbax removes the temporary step folders it finds when it
opens a checkpoint dir. The second trainer now stops before it touches anything, in one line that
names the holder (pid, host, start time, command).

The lock is an flock on the file, which the kernel drops when its process ends however it ends
(SIGKILL, a crash, a dead host's NFS lease running out), so a lock file left behind never blocks a
restart; only a live process holds it. On URLs (gs://...), and on file systems that refuse locks, there
is no lock: one job per MODEL_DIR is then the scheduler's to ensure (a JobSet, a SLURM job name).
"""
from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import socket
import sys
import time
from typing import Optional

LOCK_NAME = '.writer.lock'
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class ModelDirInUse(ValueError):
  """Another live process holds the directory's writer lock."""


@dataclasses.dataclass(frozen=True)
class Writer:
  """Who locks a directory, as the refusal says it: the setting that names the directory, the kind
  of process, and what two of them on one directory would do."""
  setting: str
  kind: str
  harm: str


TRAINER = Writer('MODEL_DIR', 'trainer',
                 "two trainers on one model dir would delete and overwrite each other's checkpoints. "
                 'Stop that one first (SIGTERM saves and stops it), or use another MODEL_DIR')


class WriterLock:
  """A held lock; `close()` (or the process's end) lets it go."""

  def __init__(self, path: str, fd: int):
    self.path = path
    self._fd: Optional[int] = fd

  def close(self) -> None:
    if self._fd is not None:
      os.close(self._fd)  # (closing the descriptor drops the flock)
      self._fd = None


def acquire(model_dir: str, log=print, writer: Writer = TRAINER) -> Optional[WriterLock]:
  """Locks MODEL_DIR (made if missing) for this process, or raises ModelDirInUse naming the process
  that holds it. None where no lock can be taken (a URL; a file system without locks: `log` says so)."""
  if '://' in str(model_dir):
    return None
  os.makedirs(os.path.abspath(model_dir), exist_ok=True)
  path = os.path.join(os.path.abspath(model_dir), LOCK_NAME)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    holder = os.pread(fd, 4096, 0) if e.errno in (errno.EWOULDBLOCK, errno.EACCES) else None
    os.close(fd)
    if holder is not None:
      raise ModelDirInUse(f'{writer.setting}={model_dir!r} is in use by '
                          f'{_describe(holder, path, writer)}: {writer.harm}') from None
    if e.errno in _NO_LOCKS:
      log(f'WARNING: {path}: this file system takes no locks ({os.strerror(e.errno)}); nothing stops '
          f'a second {writer.kind} on this {writer.setting}')
      return None
    raise
  os.ftruncate(fd, 0)
  os.pwrite(fd, json.dumps({'pid': os.getpid(), 'host': socket.gethostname(),
                            'started': time.strftime('%Y-%m-%d %H:%M:%S %Z'),
                            'command': ' '.join([sys.executable] + sys.argv)}).encode(), 0)
  return WriterLock(path, fd)


def _describe(holder: bytes, path: str, writer: Writer) -> str:
  try:
    h = json.loads(holder.decode())
    return f'another {writer.kind} (pid {h["pid"]} on {h["host"]}, started {h["started"]}; see {path})'
  except (ValueError, KeyError, TypeError):  # (written by nothing we know, or being written now)
    return f'another process (see {path})'
