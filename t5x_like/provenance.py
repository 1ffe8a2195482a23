"""Which code produced a record: the git commit, marked `-dirty` when tracked files differ from it.

A copy of the tree without its .git (a GPU machine that receives only the working tree) names the
commit through SOURCE_COMMIT, which scripts/gpu_suite.sh takes from the bundle that
scripts/gpu_bundle.sh built beside the git checkout.
"""
from __future__ import annotations

import os
import subprocess
from typing import Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def source_commit(repo: str = REPO) -> Optional[str]:
  """'<sha>' of HEAD, '<sha>-dirty' when a tracked file has uncommitted changes. When `repo` is not
  the top of a git checkout (no git, a copy without .git, or an install inside some other repository,
  whose commit says nothing about this code): $SOURCE_COMMIT, else None."""
  def git(*args):
    return subprocess.run(['git', *args], capture_output=True, text=True, check=True, cwd=repo,
                          timeout=30).stdout.strip()
  try:
    if os.path.realpath(git('rev-parse', '--show-toplevel')) != os.path.realpath(repo):
      raise OSError(f'{repo} is not the top of its git checkout')
    sha = git('rev-parse', 'HEAD')
    dirty = bool(git('status', '--porcelain', '--untracked-files=no'))
  except (OSError, subprocess.SubprocessError):
    return os.environ.get('SOURCE_COMMIT') or None
  return sha + ('-dirty' if dirty else '')
