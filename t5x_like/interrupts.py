"""Ctrl-C during a run: held while a save starts (`ctrl_c_held`), and never lost (`noting_ctrl_c`).

Python raises KeyboardInterrupt wherever the main thread is when SIGINT's handler runs. Inside a
garbage-collection callback or a `__del__` (jax registers one, `_xla_gc_callback`), it prints
"Exception ignored in ..." and goes on: the run trained on as if no Ctrl-C had come (seen in CI, a
trainer that its launcher passed SIGINT to trained until it was killed). Under the entry point's
handler (`noting_ctrl_c`) each Ctrl-C is also noted, and the train loop raises KeyboardInterrupt itself
at the next step boundary when one was (`raise_if_swallowed`); one that was not swallowed has left
the loop before. A Ctrl-C held during a save is handed to that handler when the hold ends.
"""
from __future__ import annotations

import contextlib
import signal
import threading

_noted = {'ctrl_c': False}


def _on_sigint(signum, frame):
  _noted['ctrl_c'] = True
  signal.default_int_handler(signum, frame)  # KeyboardInterrupt, as without this module


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


def raise_if_swallowed() -> None:
  """Called by the train loop at each step boundary."""
  if _noted['ctrl_c']:
    raise KeyboardInterrupt


@contextlib.contextmanager
def ctrl_c_held():
  """Holds a Ctrl-C that comes during a save, then lets it go; a second one goes through at once (a
  save that hangs can still be abandoned). Landing while Orbax starts a save (the temporary folder,
  the copies to host memory), a Ctrl-C left that save half begun, its temporary folder never
  committed; landing in the trainer's checks before it, no save at all. Let go once the save is under
  way, it finds that save whole, and the trainer finishes it (trainer.py)."""
  if (threading.current_thread() is not threading.main_thread()
      or getattr(signal.getsignal(signal.SIGINT), 'holds_ctrl_c', False)):  # (held already)
    yield
    return
  held = []

  def hold(signum, frame):
    if held and callable(previous):
      previous(signum, frame)
    held.append(frame)

  hold.holds_ctrl_c = True
  previous = signal.signal(signal.SIGINT, hold)
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)
  if held and callable(previous):
    previous(signal.SIGINT, held[0])
