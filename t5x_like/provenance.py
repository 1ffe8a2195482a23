"""Which code produced a record: the git commit, marked `-dirty` when tracked files differ from it.

A copy of the tree without its .git (a GPU machine that receives only the working tree) names the
commit through SOURCE_COMMIT, which scripts/gpu_suite.sh takes from the bundle that
scripts/gpu_bundle.sh built beside the git checkout (`bundle_commit`): the bundle also holds the
digest of the tracked files it was built from, so a tree changed since is not given its commit.
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import time
from typing import Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_RUN_FILE_HEADER = re.compile(r'^# source commit: (.*?); jax ')


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


def short(commit: Optional[str]) -> str:
  """The first 10 hex digits, keeping what follows the sha ('-dirty', ' (from the bundle)')."""
  if not commit:
    return 'unknown'
  return commit[:10] + commit[40:]


def run_file_header(jax_version: str) -> str:
  """The first line of a run's config.gin: which code and jax wrote it, and when."""
  return (f'# source commit: {source_commit() or "unknown"}; jax {jax_version}; '
          f'written {time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}\n')


def commit_in_run_file(first_line: str) -> Optional[str]:
  """The commit a run_file_header names (None for a config.gin written before it existed)."""
  m = _RUN_FILE_HEADER.match(first_line)
  return m.group(1) if m else None


def tree_digest(repo: str, files: Sequence[str]) -> str:
  """sha256 over the named files' paths and contents under `repo` (a missing file counts too): what
  identifies a tree where there is no git."""
  h = hashlib.sha256()
  for name in sorted(files):
    try:
      with open(os.path.join(repo, name), 'rb') as f:
        content = hashlib.sha256(f.read()).hexdigest()
    except OSError:
      content = 'missing'
    h.update(f'{name}\0{content}\n'.encode())
  return h.hexdigest()


def bundle_commit(bundle: str, repo: str = REPO) -> Optional[str]:
  """The commit a GPU bundle's MANIFEST names, marked '(from the bundle)' when `repo`'s files are
  those the bundle was built from (its source_files.txt), else saying that the tree changed since.
  None when the MANIFEST names no commit."""
  manifest = {}
  with open(os.path.join(bundle, 'MANIFEST'), encoding='utf-8') as f:
    for line in f:
      key, _, value = line[2:].strip().partition(' ') if line.startswith('# ') else ('', '', '')
      manifest[key] = value
  commit = manifest.get('source_commit')
  if not commit:
    return None
  try:
    with open(os.path.join(bundle, 'source_files.txt'), encoding='utf-8') as f:
      files = [l.rstrip('\n') for l in f if l.strip()]
  except OSError:
    files = []
  if files and manifest.get('source_tree') == tree_digest(repo, files):
    return f'{commit} (from the bundle)'
  return f'{commit} + changes (this tree differs from the one the bundle was built from)'
