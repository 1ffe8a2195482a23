"""SIGTERM and pod preemption notices: every process agrees on one step to save, then exits 75.

A preempted TPU VM, a SLURM job past its time and `kubectl delete` all send SIGTERM and, after a grace
period (xpk: 30 s), SIGKILL. What each process does:

- multi-process with jax's preemption service (on by default after `jax.distributed.initialize`):
  jax's own SIGTERM notifier and `reached_preemption_sync_point(step)` make every process stop at the
  same step, with no collective per step (installing a Python SIGTERM handler would replace jax's);
- one process: a Python handler sets a flag, read at the next step boundary;
- multi-process without the service: the flag is shared with an all-gather at log steps only (a
  bounded cost, no host sync per step).

From the moment the notice is seen, a timer bounds the rest (save, commit, exit) by the grace period:
if it runs out, the process says so and exits 75 anyway (the last committed checkpoint is intact, a
half-written one is never restored).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Callable, Optional

import jax
import numpy as np

from t5x_like import exit_codes


def _jax_preemption_service() -> bool:
  from jax._src import distributed
  return jax.process_count() > 1 and distributed.global_state.preemption_sync_manager is not None


class PreemptionWatcher:
  """`reached(step, at_log_step)` is True at the one step where every process stops."""

  def __init__(self, grace_secs: float, say: Callable[[str], None] = print):
    self.grace_secs = grace_secs
    self._say = say
    self._signalled_at: Optional[float] = None
    self._timer: Optional[threading.Timer] = None
    self._old_handler = None
    self._use_jax = _jax_preemption_service()
    if not self._use_jax and threading.current_thread() is threading.main_thread():
      self._old_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame):
    del signum, frame
    if self._signalled_at is None:
      self._signalled_at = time.monotonic()
      self._start_grace_timer()

  def reached(self, step: int, at_log_step: bool) -> bool:
    if self._use_jax:
      from jax.experimental import multihost_utils
      hit = multihost_utils.reached_preemption_sync_point(step)
      if hit and self._signalled_at is None:
        self._signalled_at = time.monotonic()
        self._start_grace_timer()
      return hit
    if jax.process_count() == 1:
      return self._signalled_at is not None
    if not at_log_step:
      return False
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.asarray(self._signalled_at is not None))
    if np.any(flags) and self._signalled_at is None:
      self._signalled_at = time.monotonic()
      self._start_grace_timer()
    return bool(np.any(flags))

  def _start_grace_timer(self):
    if self.grace_secs and self.grace_secs > 0 and self._timer is None:
      self._timer = threading.Timer(self.grace_secs, self._out_of_time)
      self._timer.daemon = True
      self._timer.start()

  def _out_of_time(self):
    print(f'preempted: the grace period of {self.grace_secs:g} s ran out before the checkpoint '
          'was committed; exiting (the last committed checkpoint is intact; resume from it)',
          file=sys.stderr, flush=True)
    os._exit(exit_codes.PREEMPTED)  # pylint: disable=protected-access

  def close(self):
    if self._timer is not None:
      self._timer.cancel()
    if self._old_handler is not None:
      signal.signal(signal.SIGTERM, self._old_handler)
      self._old_handler = None
