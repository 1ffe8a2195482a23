"""Restart a job only on the trainer's restartable exit codes (t5x_like/exit_codes.py), at most
`max_restarts` times. The same rule, written for bash, goes into the SLURM batch script."""
from __future__ import annotations

from typing import Callable

from t5x_like import exit_codes

_NAMES = {getattr(exit_codes, n): n for n in
          ('FINISHED', 'CRASHED', 'CONFIG_ERROR', 'DIVERGED', 'PEER_LOST', 'STORAGE_FULL', 'PREEMPTED',
           'INTERRUPTED')}


def describe(returncode: int) -> str:
  if returncode in _NAMES:
    return _NAMES[returncode]
  if returncode < 0 or returncode > 128:
    sig = -returncode if returncode < 0 else returncode - 128
    return f'killed by signal {sig}'
  return 'unknown'


def run_with_restarts(run_once: Callable[[int], int], max_restarts: int, log=print,
                      stopped: Callable[[], bool] = lambda: False) -> int:
  """Calls run_once(attempt) until it exits 0 or a code that is not restartable, until max_restarts
  restarts are used up, or until `stopped()` (the launcher itself was told to stop); returns the last
  exit code."""
  attempt = 0
  while True:
    rc = run_once(attempt)
    if rc == exit_codes.FINISHED or stopped():
      return rc
    if not exit_codes.is_restartable(rc):
      log(f'launch: exit code {rc} ({describe(rc)}) is not restartable; stopping')
      return rc
    if attempt >= max_restarts:
      log(f'launch: exit code {rc} ({describe(rc)}); no restarts left (--max_restarts={max_restarts})')
      return rc
    attempt += 1
    log(f'launch: exit code {rc} ({describe(rc)}) is restartable; restart {attempt}/{max_restarts}')


def bash_is_restartable() -> str:
  """A bash function `is_restartable CODE` with exit_codes.is_restartable's rule."""
  codes = '|'.join(str(c) for c in sorted(exit_codes.RESTARTABLE))
  return ('is_restartable() {\n'
          f'  case "$1" in {codes}) return 0;; esac\n'
          '  [ "$1" -gt 128 ]\n'
          '}')
