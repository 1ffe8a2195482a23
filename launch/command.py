"""The train command every backend runs, and the shell quoting it goes through.

User strings (gin bindings with quotes, spaces, `@` references) are quoted with shlex once per shell
they cross; tests parse each generated command back and compare it with the original argv.
"""
from __future__ import annotations

import os
import shlex
import sys
from typing import Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_MODULE = 't5x_like.train'


def split_train_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Launcher options before `--`, the train command's arguments after it."""
  argv = list(argv)
  if '--' not in argv:
    return argv, []
  i = argv.index('--')
  return argv[:i], argv[i + 1:]


def train_argv(train_args: Sequence[str], python: str = 'python3', distributed: bool = True
               ) -> list[str]:
  """`python -m t5x_like.train ARGS [--distributed]` (jax finds the coordinator on TPU and SLURM)."""
  args = [a for a in train_args if a != '--distributed']
  return [python, '-m', TRAIN_MODULE, *args] + (['--distributed'] if distributed else [])


def join(argv: Sequence[str]) -> str:
  return shlex.join([str(a) for a in argv])


def env_assignment(kv: str) -> str:
  """KEY=VALUE -> KEY='VALUE' for a shell (quoting the whole word would make it a command)."""
  key, sep, value = kv.partition('=')
  if not sep or not key.isidentifier():
    raise ValueError(f'--env {kv!r}: expected KEY=VALUE')
  return f'{key}={shlex.quote(value)}'


def check_train_args(train_args: Sequence[str]) -> None:
  """One line before anything runs: the train command needs a gin file."""
  if not any(a.startswith('--gin_file') for a in train_args):
    raise ValueError('no --gin_file after `--` (usage: python -m launch BACKEND [options] -- '
                     '--gin_file=... --gin.MODEL_DIR=...)')


def write_output(text: str, path: str | None, stream=sys.stdout) -> None:
  """--dry_run: print exactly what would run; with --output, also write it to a file."""
  stream.write(text if text.endswith('\n') else text + '\n')
  if path:
    with open(path, 'w') as f:
      f.write(text if text.endswith('\n') else text + '\n')
