"""The processes a launcher runs for a job (launch.local's workers, `python -m launch local`'s train
command, launch.sweep's runs), and the signals it passes on to them.

As torchrun starts its workers, each child starts in a session of its own, and the launcher passes on
what it receives: SIGINT as SIGINT, SIGTERM as SIGTERM, SIGHUP (the terminal closed) as SIGTERM, so
that each process saves and stops as it would on preemption. A signal meant for the job then reaches
every process exactly once, whether it came from a terminal's Ctrl-C (which reaches the launcher's
process group only), from `kill -INT <launcher>`, or from a supervisor. When the children shared the
launcher's process group, a SIGINT to the launcher alone never reached them (launch.local waited a
minute, then stopped them with SIGTERM and SIGKILL), and Python's `subprocess.run` SIGKILLed the train
command 0.25 s after the launcher's Ctrl-C, cutting off the checkpoint being written. A second Ctrl-C
is passed on too: the trainer takes it as "abandon the save in flight". Ctrl-Z (SIGTSTP) pauses the
children with the launcher, and `fg` or `bg` (SIGCONT) resumes them; the trainer's step watchdog does
not count the time a process was stopped.

A launcher that dies without passing anything on (SIGKILL, the OOM killer, a crash) leaves children in
sessions of their own that nothing would stop: on Linux each child asks the kernel for SIGTERM when
the launcher dies (prctl PR_SET_PDEATHSIG, as Ray does for its workers), and saves and stops as on
preemption; the same command then resumes it, its model dir's writer lock let go.

Off the main thread Python cannot install signal handlers: there the children stay in the launcher's
process group, where a terminal's Ctrl-C still reaches them directly (and, the kernel tying the death
signal to the thread that started them, they get none).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from typing import Optional

from t5x_like import exit_codes

PASSED_ON = {signal.SIGINT: signal.SIGINT, signal.SIGTERM: signal.SIGTERM,
             signal.SIGHUP: signal.SIGTERM}
ON_LAUNCHER_DEATH = signal.SIGTERM
# The child's first lines, before it execs its own command: prctl(PR_SET_PDEATHSIG) outlives the exec.
# (Not a preexec_fn: that makes Python fork a launcher whose jax threads are running, which jax warns
# may deadlock the child.)
_DIE_WITH_LAUNCHER = (
    'import ctypes, os, sys\n'
    'launcher, signum = int(sys.argv[1]), int(sys.argv[2])\n'
    'ctypes.CDLL(None, use_errno=True).prctl(1, signum, 0, 0, 0)  # PR_SET_PDEATHSIG\n'
    'if os.getppid() != launcher:  # (it died before the prctl: the kernel will not signal)\n'
    '  os.kill(os.getpid(), signum)\n'
    'os.execvp(sys.argv[3], sys.argv[3:])\n')


class Stopped(Exception):
  """The launcher was told to stop (`.signum`) and its children have exited: `.exit_code` is what the
  launcher exits with (130 after SIGINT; after SIGTERM or SIGHUP, 75 as the trainer's, unless the
  launcher names another)."""

  def __init__(self, signum: int, exit_code: Optional[int] = None):
    self.signum = signum
    self.exit_code = (exit_codes.INTERRUPTED if signum == signal.SIGINT else
                      exit_code if exit_code is not None else exit_codes.PREEMPTED)
    super().__init__(f'stopped by {signal.Signals(signum).name}')


class Children:
  """A context manager: while open (on the main thread), the signals of PASSED_ON that this process
  receives are passed on to every child started with `start` that still runs; `received` lists them.
  Children started after a signal get it at once."""

  def __init__(self):
    self.procs: list[subprocess.Popen] = []
    self.received: list[int] = []
    self.active = False
    self._old = {}

  def __enter__(self) -> 'Children':
    if threading.current_thread() is threading.main_thread():
      for signum in PASSED_ON:
        self._old[signum] = signal.signal(signum, self._pass_on)
      self._old[signal.SIGTSTP] = signal.signal(signal.SIGTSTP, self._pause_too)
      self._old[signal.SIGCONT] = signal.signal(signal.SIGCONT, self._resume_too)
      self.active = True
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._old.items():
      signal.signal(signum, handler)
    self._old.clear()
    self.active = False

  def start(self, argv, **popen_kwargs) -> subprocess.Popen:
    if self.active and sys.platform == 'linux':
      argv = [sys.executable, '-c', _DIE_WITH_LAUNCHER, str(os.getpid()), str(int(ON_LAUNCHER_DEATH)),
              *argv]
    proc = subprocess.Popen(argv, start_new_session=self.active, **popen_kwargs)
    self.procs.append(proc)
    if self.received:  # (a signal that came while it was being started)
      proc.send_signal(PASSED_ON[self.received[-1]])
    return proc

  def _pass_on(self, signum, frame) -> None:
    del frame
    self.received.append(signum)
    self._send_all(PASSED_ON[signum])  # (does nothing for a process already reaped)

  def _pause_too(self, signum, frame) -> None:
    """Ctrl-Z: the children pause with the launcher, as a terminal's job does. (SIGSTOP: the kernel
    discards a SIGTSTP sent to a process in a session of its own.)"""
    del signum, frame
    self._send_all(signal.SIGSTOP)
    os.kill(os.getpid(), signal.SIGSTOP)  # (the shell sees its job stopped; `fg` sends SIGCONT)

  def _resume_too(self, signum, frame) -> None:
    del signum, frame
    self._send_all(signal.SIGCONT)

  def _send_all(self, signum: int) -> None:
    for proc in self.procs:
      try:
        proc.send_signal(signum)
      except ProcessLookupError:
        pass

  @property
  def stopping(self) -> bool:
    return bool(self.received)

  def raise_if_stopped(self, exit_code: Optional[int] = None) -> None:
    """Once the children have exited: Stopped, if the launcher was told to stop (`exit_code`: the
    one to exit with after SIGTERM or SIGHUP, default 75)."""
    if self.received:
      # SIGINT wins: a Ctrl-C during a preemption's save is still the user's "stop".
      raise Stopped(signal.SIGINT if signal.SIGINT in self.received else self.received[0],
                    exit_code)
