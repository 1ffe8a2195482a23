"""Registering seqio tasks from builders that may run more than once in a process (tests, notebooks)."""
from __future__ import annotations

import seqio


def register_task(name: str, **kwargs) -> seqio.Task:
  """Adds (or replaces) a seqio Task; replacing keeps gin files re-parseable in one process."""
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(name, **kwargs)


def register_mixture(name: str, tasks, **kwargs) -> seqio.Mixture:
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  return seqio.MixtureRegistry.add(name, tasks, **kwargs)
