"""A step watchdog: when no train step completes for `timeout` seconds, the process says so and exits
with PEER_LOST (4), so that a launcher restarts the job instead of it hanging until the heartbeat
timeout or forever.

A dead or stopped peer makes every other process block inside a collective; the loop itself then
stops, so the main thread cannot notice. A thread waits on each dispatched step's (tiny) output
instead: the time since the last completed step is real device progress, not dispatch. The clock
starts after the first step (compile and first-run autotuning can take minutes) and is paused around
evaluations and the final checkpoint wait, which are not steps, and while the process itself is
stopped (Ctrl-Z, SIGSTOP), which its own late wake-up shows.
"""
from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
import time

from t5x_like import exit_codes


FROZEN_SECS = 5.0  # a wake-up this much later than asked for: the process was stopped, not slow


class StepWatchdog:

  def __init__(self, timeout_secs: float, describe=lambda: ''):
    self.timeout = timeout_secs
    self._describe = describe
    self._pending: queue.Queue = queue.Queue()
    self._last = None  # monotonic time of the last completed step; None until the first one
    self._last_step = None
    self._paused = 0
    self._stop = threading.Event()
    self._waiter = None
    if self.timeout and self.timeout > 0:
      self._waiter = threading.Thread(target=self._wait_steps, daemon=True, name='step-waiter')
      self._waiter.start()
      threading.Thread(target=self._watch, daemon=True, name='step-watchdog').start()

  def dispatched(self, step: int, token) -> None:
    """Call after dispatching `step`; `token` is any small jax.Array the step outputs."""
    if self.timeout and self.timeout > 0:
      self._pending.put((step, token))

  def _wait_steps(self):
    while not self._stop.is_set():
      try:
        step, token = self._pending.get(timeout=0.5)
      except queue.Empty:
        continue
      try:
        token.block_until_ready()
      except Exception:  # pylint: disable=broad-except
        return  # the main thread sees the same error
      self._last, self._last_step = time.monotonic(), step

  def _watch(self):
    interval = min(1.0, self.timeout / 4)
    woke = time.monotonic()
    while not self._stop.wait(interval):
      now = time.monotonic()
      frozen, woke = now - woke - interval, now
      last = self._last
      if last is None or self._paused:
        continue
      if frozen > FROZEN_SECS:
        # This process itself was stopped (Ctrl-Z, SIGSTOP, a suspended VM) and the clock ran on:
        # the time it was frozen is nobody's hang. (It took a Ctrl-Z'd run that `fg` resumed for a
        # dead peer, exit 4.)
        self._last = min(now, last + frozen)
        continue
      idle = now - last
      if idle > self.timeout:
        print(f'error: no train step finished for {idle:.0f} s (TrainerConfig.step_timeout_secs='
              f'{self.timeout:g}; last finished step {self._last_step}): another process died or '
              f'hangs, or the input pipeline stalled{self._describe()}; exiting with '
              f'{exit_codes.PEER_LOST} (restartable)', file=sys.stderr, flush=True)
        os._exit(exit_codes.PEER_LOST)  # pylint: disable=protected-access

  @contextlib.contextmanager
  def paused(self):
    self._paused += 1
    try:
      yield
    finally:
      self._paused -= 1
      if self._last is not None:
        self._last = time.monotonic()

  def close(self):
    """Stops both threads and waits for the step waiter. A daemon thread still inside jax's C++
    (block_until_ready) when the interpreter finalises is unwound by pthread_exit through a C++
    catch-all, and the process aborts ("FATAL: exception not rethrown") after a finished run."""
    self._stop.set()
    if self._waiter is not None:
      self._waiter.join(timeout=10)
