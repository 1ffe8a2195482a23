"""Where text comes from: text-line files, and SWORD Bibles exported to text lines.

Every reader checks its files up front and names the missing one, so a typo in a gin file fails at
set-up, not inside tf.data after the model has compiled.
"""
from __future__ import annotations

import glob
import os
from typing import Iterable, Mapping, Sequence

import seqio
import tensorflow as tf

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resolve_files(patterns: Sequence[str] | str, what: str) -> list[str]:
  """Expands globs; raises FileNotFoundError naming `what` (the gin binding) and the pattern."""
  if isinstance(patterns, str):
    patterns = [patterns]
  if not patterns:
    raise ValueError(f'{what}: no files given')
  out = []
  for p in patterns:
    p = os.path.expanduser(p)
    matches = sorted(glob.glob(p))
    if not matches and not os.path.isabs(p):
      # Configs name paths relative to the repo root; let them work from any working directory.
      matches = sorted(glob.glob(os.path.join(REPO_ROOT, p)))
    if not matches:
      raise FileNotFoundError(f'{what}: no file matches {p}')
    out.extend(matches)
  return out


def text_line_source(split_files: Mapping[str, Sequence[str]], what: str) -> seqio.DataSource:
  """A seqio source of one example per line, {'text': line}, empty lines dropped."""
  resolved = {split: resolve_files(files, f'{what}[{split!r}]')
              for split, files in split_files.items() if files}
  return seqio.TextLineDataSource(resolved)


def lines_to_text(ds: tf.data.Dataset) -> tf.data.Dataset:
  """TextLineDataSource yields bare strings; features are dicts. Empty lines carry no training signal."""
  ds = ds.map(lambda line: {'text': tf.strings.strip(line)}, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.filter(lambda ex: tf.strings.length(ex['text']) > 0)


SWORD_PATHS = ('/usr/share/sword', os.path.expanduser('~/.sword'))


def read_sword_bible(module: str = 'engWEB2015eb', sword_path: str | None = None
                     ) -> Iterable[tuple[str, str]]:
  """(verse id 'BOOK.CHAPTER.VERSE', text) for every verse of a SWORD Bible module (pysword)."""
  from pysword.modules import SwordModules
  paths = [sword_path] if sword_path else [p for p in SWORD_PATHS if os.path.isdir(p)]
  for path in paths:
    mods = SwordModules(path)
    found = mods.parse_modules()
    if module in found:
      bible = mods.get_bible_from_module(module)
      for book in bible.get_structure().get_books().get('ot', []) + \
          bible.get_structure().get_books().get('nt', []):
        for chapter in range(1, book.num_chapters + 1):
          for verse in range(1, book.chapter_lengths[chapter - 1] + 1):
            text = bible.get(books=[book.name], chapters=[chapter], verses=[verse],
                             clean=True).strip()
            if text:
              yield f'{book.osis_name}.{chapter}.{verse}', ' '.join(text.split())
      return
  raise FileNotFoundError(f'SWORD module {module} not found in {paths or list(SWORD_PATHS)}; '
                          'install it (Debian/Ubuntu: apt-get install sword-text-web) or give '
                          'your own text files')
