"""What `python -m t5x_like.train` exits with, so that launchers know whether to restart a job.

| code | name        | meaning                                                         | restart? |
|------|-------------|-----------------------------------------------------------------|----------|
| 0    | FINISHED    | reached TRAIN_STEPS (or nothing left to train)                  | no       |
| 1    | CRASHED     | an unexpected error; everything up to the last checkpoint is safe | yes      |
| 2    | CONFIG_ERROR| bad gin, data, vocabulary or run dir (or one that a live trainer | no       |
|      |             | holds), processes of one job that differ (devices, code, jax,   |          |
|      |             | gin config), or training data that ran out (its step saved      |          |
|      |             | first): a restart would fail again                              |          |
| 3    | DIVERGED    | non-finite loss under the `stop` policy: a restart would diverge again | no |
| 4    | PEER_LOST   | another process died or hung, or no step finished in time      | yes      |
| 5    | STORAGE_FULL| no room for a checkpoint (disk full, quota): refused before the | no       |
|      |             | compile, or a save failed (the checkpoints before it are kept)  |          |
| 75   | PREEMPTED   | SIGTERM / preemption notice: the current step was saved; resume me | yes    |
| 130  | INTERRUPTED | Ctrl-C (SIGINT), after the checkpoint being written was finished | as a signal death: yes |

A process killed by a signal (SIGKILL: 137 from a shell, -9 from Python's subprocess) counts as
CRASHED. 75 is sysexits' EX_TEMPFAIL ("try again later").
"""
from __future__ import annotations

FINISHED = 0
CRASHED = 1
CONFIG_ERROR = 2
DIVERGED = 3
PEER_LOST = 4
STORAGE_FULL = 5
PREEMPTED = 75
INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a process that Ctrl-C stopped

RESTARTABLE = frozenset({CRASHED, PEER_LOST, PREEMPTED})


def is_restartable(returncode: int) -> bool:
  """For a launcher: True for the restartable codes and for deaths by a signal (negative in
  Python's subprocess, 128 + signal from a shell)."""
  return returncode in RESTARTABLE or returncode < 0 or returncode > 128
