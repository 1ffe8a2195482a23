"""Evaluation text: line-aligned files, or FLORES-200 read straight out of its tar.

FLORES-200 is evaluation-only and its maintainers ask that it not be re-hosted as plain text, so it is
read member by member from the .tar.gz and never unpacked to disk.
"""
from __future__ import annotations

import os
import tarfile
from typing import Optional

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_FLORES_TAR = os.path.join(os.path.dirname(REPO_ROOT), 'shared', 'data', 'eval',
                                  'flores200_devtest_20langs.tar.gz')


def read_flores(language: str, tar_path: Optional[str] = None, split: str = 'devtest') -> list[str]:
  """Lines of FLORES-200 `split` for a code such as 'eng_Latn', read from the tar."""
  tar_path = tar_path or DEFAULT_FLORES_TAR
  if not os.path.exists(tar_path):
    raise FileNotFoundError(f'FLORES tar {tar_path} not found (pass --flores_tar)')
  with tarfile.open(tar_path) as tar:
    member = f'{split}/{language}.{split}'
    try:
      f = tar.extractfile(member)
    except KeyError:
      codes = sorted(n.split('/')[-1].split('.')[0] for n in tar.getnames()
                     if n.endswith('.' + split))
      raise ValueError(f'FLORES has no {language!r} in {tar_path}; it has {codes}') from None
    return f.read().decode('utf-8').rstrip('\n').split('\n')


def read_lines(source: str, flores_tar: Optional[str] = None, limit: Optional[int] = None
               ) -> list[str]:
  """'flores:CODE' (from the FLORES tar) or a text file; one example a line, in file order.

  Empty lines are kept, so line i stays line i in every language of a parallel set.
  """
  if source.startswith('flores:'):
    lines = read_flores(source[len('flores:'):], flores_tar)
  else:
    if not os.path.exists(source):
      raise FileNotFoundError(f'evaluation text {source} not found')
    with open(source, encoding='utf-8') as f:
      lines = f.read().rstrip('\n').split('\n')
  lines = [' '.join(l.split()) for l in lines]
  return lines[:limit] if limit else lines


def parse_spec(spec: str) -> tuple[str, int]:
  """'SOURCE@K' -> (SOURCE, K): text SOURCE encoded in cloned language K (default 0)."""
  source, sep, lang = spec.rpartition('@')
  if sep and lang.isdigit():
    return source, int(lang)
  return spec, 0
