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
from jax._src import distributed  # the preemption sync manager jax.distributed started, if any
from jax.experimental import multihost_utils

from t5x_like import exit_codes


def _jax_preemption_service() -> bool:
  return jax.process_count() > 1 and distributed.global_state.preemption_sync_manager is not None


_notice = {'at': None, 'grace_secs': 30.0, 'timer': None}


def _on_sigterm(signum, frame):
  del signum, frame
  if _notice['at'] is None:
    _notice['at'] = time.monotonic()
    _start_grace_timer()


def install_sigterm_handler(grace_secs: Optional[float] = None):
  """Catches SIGTERM from now on (the entry point calls this first, so that a notice during set-up
  or compile is not lost). In a multi-process job, `jax.distributed.initialize` later installs
  jax's own notifier over it, which is what the processes then agree through."""
  if grace_secs is not None:
    _notice['grace_secs'] = grace_secs
  if threading.current_thread() is threading.main_thread():
    return signal.signal(signal.SIGTERM, _on_sigterm)
  return None


def _start_grace_timer():
  grace = _notice['grace_secs']
  if grace and grace > 0 and _notice['timer'] is None:
    _notice['timer'] = threading.Timer(grace, _out_of_time, args=(grace,))
    _notice['timer'].daemon = True
    _notice['timer'].start()


def _out_of_time(grace):
  print(f'preempted: the grace period of {grace:g} s ran out before the checkpoint was committed; '
        'exiting (the last committed checkpoint is intact; resume from it)',
        file=sys.stderr, flush=True)
  os._exit(exit_codes.PREEMPTED)  # pylint: disable=protected-access


class PreemptionWatcher:
  """`reached(step, at_log_step)` is True at the one step where every process stops."""

  def __init__(self, grace_secs: float, say: Callable[[str], None] = print):
    del say
    _notice['grace_secs'] = grace_secs
    self._old_handler = None
    self._use_jax = _jax_preemption_service()
    if not self._use_jax and signal.getsignal(signal.SIGTERM) is not _on_sigterm:
      self._old_handler = install_sigterm_handler()

  @property
  def _signalled_at(self):
    return _notice['at']

  def reached(self, step: int, at_log_step: bool) -> bool:
    if self._use_jax:
      hit = multihost_utils.reached_preemption_sync_point(step)
      if hit and _notice['at'] is None:
        _notice['at'] = time.monotonic()
        _start_grace_timer()
      return hit
    if jax.process_count() == 1:
      return _notice['at'] is not None
    if not at_log_step:
      return False
    flags = multihost_utils.process_allgather(np.asarray(_notice['at'] is not None))
    if np.any(flags) and _notice['at'] is None:
      _notice['at'] = time.monotonic()
      _start_grace_timer()
    return bool(np.any(flags))

  def close(self):
    """Stops the grace timer (the process is exiting by itself) and puts back the handler that
    was there before fit, if fit installed one."""
    if _notice['timer'] is not None:
      _notice['timer'].cancel()
    _notice['timer'] = None
    _notice['at'] = None
    if self._old_handler is not None:
      signal.signal(signal.SIGTERM, self._old_handler)
      self._old_handler = None
