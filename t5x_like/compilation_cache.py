"""JAX's persistent compilation cache, as the entry points and launchers use it.

A run restarted after preemption, each resumed segment, and the runs of a sweep (one model, several
data mixtures) compile the same programs. With a cache directory they load XLA's executables from it
instead of compiling again: minutes for a large model on a pod, where every restart would otherwise
pay them. `python -m t5x_like.train --compilation_cache_dir=DIR` (also t5x_like.eval; launch.sweep
uses SWEEP_DIR/compilation_cache unless told otherwise); jax's own `JAX_COMPILATION_CACHE_DIR` works
as well. On several hosts DIR must be one shared directory (gs://..., a shared file system): process 0
writes it, every process reads it. jax stores only programs that took at least
`jax_persistent_cache_min_compile_time_secs` (1 s by default) to compile.

The cache holds code the job will run: a directory that others can write lets them run code in your
job (jax's own warning), so keep it as private as the checkpoints.
"""
from __future__ import annotations

import collections
import contextlib
import importlib.util
import os
import tempfile
from typing import Iterator, Optional

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cache

_REQUEST = '/jax/compilation_cache/compile_requests_use_cache'
_HIT = '/jax/compilation_cache/cache_hits'
LOADED = 'loaded from the compilation cache'  # what log lines say of a compile the cache served
LOCAL_MAX_BYTES = 16 * 2**30  # a local cache's size limit, unless jax_compilation_cache_max_size says


def use(directory: Optional[str], flag: str = '--compilation_cache_dir') -> None:
  """Points jax's persistent cache at `directory` (None or '': leave jax's setting as it is; 'none':
  no cache, even one JAX_COMPILATION_CACHE_DIR names, as launch.sweep takes it). A local directory is
  created and must be writable, else ValueError naming `flag`, before anything compiles; a remote one
  (gs://...) is jax's to open."""
  if not directory:
    return
  if is_off(directory):
    # (Taken as a path, it made a folder named "none" in the working directory.)
    if jax.config.jax_compilation_cache_dir is not None:
      jax.config.update('jax_compilation_cache_dir', None)
      jax_cache.reset_cache()
    return
  if '://' not in directory:
    directory = os.path.abspath(os.path.expanduser(directory))
    try:
      os.makedirs(directory, exist_ok=True)
      with tempfile.TemporaryFile(dir=directory):
        pass
    except OSError as e:
      raise ValueError(f'{flag}={directory}: cannot write a compilation cache there '
                       f'({e.strerror or e})') from None
    if jax.config.jax_compilation_cache_max_size == -1 and importlib.util.find_spec('filelock'):
      # A bound turns on jax's LRU eviction, and with it a file lock around every read and write:
      # the runs of a sweep that train side by side write the same entries at once.
      jax.config.update('jax_compilation_cache_max_size', LOCAL_MAX_BYTES)
  if jax.config.jax_compilation_cache_dir == directory:
    return
  jax_cache.set_cache_dir(directory)
  # jax opens its cache once, at the first compile: a process that compiled already (a sweep that
  # evaluates several runs in-process) reopens it at the new directory.
  jax_cache.reset_cache()


def is_off(directory: Optional[str]) -> bool:
  """'none' (any case) in a --compilation_cache_dir flag: no cache."""
  return directory is not None and directory.strip().lower() == 'none'


@contextlib.contextmanager
def disabled() -> Iterator[None]:
  """Compiles inside neither read nor write the persistent cache. For ahead-of-time compiles for a
  topology this process has no devices of (launch.preflight): jax stores them but cannot load them
  back ('PjRtCompiler must be constructed with a Client')."""
  before = jax.config.jax_enable_compilation_cache
  jax.config.update('jax_enable_compilation_cache', False)
  jax_cache.reset_cache()  # jax decides once per process whether it uses its cache: ask it again
  try:
    yield
  finally:
    jax.config.update('jax_enable_compilation_cache', before)
    jax_cache.reset_cache()


def current_dir() -> Optional[str]:
  """The cache directory in effect (from use(), or jax's JAX_COMPILATION_CACHE_DIR), or None."""
  return jax.config.jax_compilation_cache_dir or None


@contextlib.contextmanager
def lookups() -> Iterator[collections.Counter]:
  """Counts, while open, the compiles that looked in the cache ('requests') and those it served
  ('hits')."""
  counts = collections.Counter()

  def listener(event: str, **kwargs) -> None:
    if event == _REQUEST:
      counts['requests'] += 1
    elif event == _HIT:
      counts['hits'] += 1

  jax.monitoring.register_event_listener(listener)
  try:
    yield counts
  finally:
    jax.monitoring.unregister_event_listener(listener)


def describe(counts: collections.Counter) -> str:
  """What the cache did while `lookups` counted, for a log line: 'loaded from the compilation
  cache', 'H of N compiles loaded from the compilation cache', 'compiled; compilation cache at DIR'
  (jax stores what took long enough to compile), or '' when no cache was in use."""
  requests, hits = counts['requests'], counts['hits']
  if not requests or not current_dir():  # (jax looks up a key even when it has no directory)
    return ''
  if hits >= requests:
    return LOADED
  if hits:
    return f'{hits} of {requests} compiles {LOADED}'
  return f'compiled; compilation cache at {current_dir()}'
