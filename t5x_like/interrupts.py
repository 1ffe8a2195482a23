"""Ctrl-C during a run: asked of the train loop, which stops at a step boundary (`StopAtStepBoundary`),
and never lost (`noting_ctrl_c`); outside the loop, held while a save starts (`ctrl_c_held`).

Python raises KeyboardInterrupt wherever the main thread is when SIGINT's handler runs, between any two
bytecodes, also inside Python that jax's, TensorFlow's or Orbax's C++ called. Raised there, it can
leave their native state half changed: with a SIGINT every millisecond and each KeyboardInterrupt
caught, a loop of tf.data reads, jit calls and async Orbax saves aborted within a minute ("corrupted
size vs. prev_size", glibc's heap check); with handlers that only note the signal, ~37,000 of them did
nothing. Twice in ~140 runs here, and once in CI, a trainer that its sweep passed one Ctrl-C to died so
(SIGSEGV in a tf.data read, SIGABRT) instead of stopping. And inside a garbage-collection callback or a
`__del__` (jax registers one), Python prints "Exception ignored in ..." and goes on: the run trained on
as if no Ctrl-C had come (seen in CI).

So while the train loop runs, the first Ctrl-C only asks (`asked`). One process stops at the next
step boundary or between two eval batches (`StoppedTogether`, raised by the trainer), where it
finishes a save in flight and says where the run stands. Several processes must stop at the same
step (one a step ahead would wait in that step's collectives for one that left, and a save commits
only once every process wrote its part), so they agree: at each log step, where the loop syncs with
the host anyway, and between eval batches, one all-gather tells every process whether any was
asked, and all stop there together if one was. A second Ctrl-C raises at once, for a loop that
hangs (a stalled input pipeline, a save that never ends, a peer that is gone). Before the loop
(set-up, the compile), Ctrl-C raises as usual; under the entry point's `noting_ctrl_c` one that
Python swallowed there is still noted, and stops the loop at its first chance. Processes that
stopped together also exit together (the entry point).
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading

_noted = {'ctrl_c': False, 'where': b'after this step'}


class StoppedTogether(KeyboardInterrupt):
  """Raised on every process of a job at the same point, when they agreed to stop there: each
  finishes a save in flight, which the others are finishing too."""


def _on_sigint(signum, frame):
  _noted['ctrl_c'] = True
  signal.default_int_handler(signum, frame)  # KeyboardInterrupt, as without this module


def _ask_to_stop(signum, frame):
  if _noted['ctrl_c']:
    signal.default_int_handler(signum, frame)  # the second: at once
  _noted['ctrl_c'] = True
  # (os.write: a print here could land inside a print of the main thread's and fail as
  # reentrant. The newline first ends the line a terminal's echoed ^C began; a log file gets no
  # blank line.)
  os.write(2, (b'\n' if os.isatty(2) else b'') + b'Ctrl-C: stopping ' + _noted['where'] +
           b' (Ctrl-C again to stop at once)\n')


@contextlib.contextmanager
def noting_ctrl_c():
  """The entry point runs the job inside this: SIGINT's handler notes each Ctrl-C (main thread only;
  elsewhere nothing changes), and what it noted is forgotten on the way out."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  previous = signal.signal(signal.SIGINT, _on_sigint)
  _noted['ctrl_c'] = False
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)
    _noted['ctrl_c'] = False


class StopAtStepBoundary:
  """From construction to close(), on the main thread, the first Ctrl-C asks the loop to stop (see
  above; `where` is what the loop then says: when it will stop) and a second raises
  KeyboardInterrupt. A process that ignores SIGINT (started in the background by a shell) goes on
  ignoring it."""

  def __init__(self, where: str = 'after this step'):
    self._previous = None
    if (threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN):
      _noted['where'] = where.encode()
      self._previous = signal.signal(signal.SIGINT, _ask_to_stop)

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGINT, self._previous)
      self._previous = None
      _noted['ctrl_c'] = False  # (acted on: the loop has stopped)


def asked() -> bool:
  """Whether a Ctrl-C was asked (or swallowed) in this process and not yet acted on."""
  return _noted['ctrl_c']


@contextlib.contextmanager
def ctrl_c_held():
  """Checkpointer.save's: holds a Ctrl-C that comes during a save, then lets it go; a second one goes
  through at once (a save that hangs can still be abandoned). Landing while Orbax starts a save (the
  temporary folder, the copies to host memory), a Ctrl-C left that save half begun, its temporary
  folder never committed. Let go once the save is under way, it finds that save whole, and the caller
  can finish it. (In the train loop a first Ctrl-C raises nothing, and there is nothing to hold.)"""
  if (threading.current_thread() is not threading.main_thread()
      or signal.getsignal(signal.SIGINT) is _ask_to_stop):  # (a first Ctrl-C raises nothing anyway)
    yield
    return
  held = []

  def hold(signum, frame):
    if held and callable(previous):
      previous(signum, frame)
    held.append(frame)

  previous = signal.signal(signal.SIGINT, hold)
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)
  if held and callable(previous):
    previous(signal.SIGINT, held[0])
