"""Bilingual dictionaries: word -> ordered translation candidates (several targets per word).

Formats:
  muse     `source target` a line, space separated (MUSE); a word's targets in file order.
  tsv      `source<TAB>target` a line (Wiktionary exports); multi-word entries kept as phrases.
  dictd    FreeDict `.index` + `.dict.dz` (or `.dict`); targets are the headword's translations.
  induced  from a parallel corpus (`induce_dictionary`): no file needed.

Keys are lower-cased (lookups are by the lower-cased word, the switcher restores case), and
candidates are kept in order of first appearance, deduplicated.
"""
from __future__ import annotations

import collections
import gzip
import logging
import os
import re
from typing import Iterable, Mapping, Optional, Sequence

import gin

from tasks import sources
from tasks.sources import InputError

Dictionary = dict[str, list[str]]


def _add(d: Dictionary, src: str, tgt: str):
  src, tgt = src.strip().lower(), tgt.strip()
  if src and tgt:
    cands = d.setdefault(src, [])
    if tgt not in cands:
      cands.append(tgt)


def read_muse(path: str) -> Dictionary:
  """MUSE: `source target` per line; a line without a translation is an error naming the line."""
  d: Dictionary = {}
  with open(path, 'rb') as f:
    for lineno, raw in enumerate(f, 1):
      line = sources._check_utf8(path, lineno, raw).strip()
      if not line:
        continue
      parts = line.split()
      if len(parts) != 2:
        raise InputError(f'{path}:{lineno}: expected `source target`, got {line!r}')
      _add(d, parts[0], parts[1])
  return d


def read_tsv_dictionary(path: str) -> Dictionary:
  d: Dictionary = {}
  for _, (src, tgt) in sources.tsv_rows(path, 2, 'dictionary'):
    _add(d, src, tgt)
  return d


_DICTD_SENSE = re.compile(r'^\s*(?:\d+\.\s*)?(.+?)\s*$')
_B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'


def _dictd_int(s: str) -> int:
  n = 0
  for ch in s:
    n = n * 64 + _B64.index(ch)
  return n


def read_dictd(path: str) -> Dictionary:
  """FreeDict dictd: `path` is the `.index` file (or its stem); the body is `.dict.dz` or `.dict`.

  Each index line is `headword<TAB>offset<TAB>length` (base64 numbers). A FreeDict entry is the
  headword line (with pronunciation) and then its translations, one or several a line, separated
  by commas or semicolons; lines in `<...>` or starting with a quote are notes, not translations.
  """
  stem = path[:-len('.index')] if path.endswith('.index') else path
  index = stem + '.index'
  body_path = next((p for p in (stem + '.dict.dz', stem + '.dict') if os.path.exists(p)), None)
  if not os.path.exists(index) or body_path is None:
    raise FileNotFoundError(f'{path}: dictd needs {index} and {stem}.dict.dz (or .dict)')
  # .dict.dz is gzip with random-access chunks; plain gzip decompression reads it whole.
  opener = gzip.open if body_path.endswith('.dz') else open
  with opener(body_path, 'rb') as f:
    body = f.read()
  d: Dictionary = {}
  with open(index, 'rb') as f:
    for lineno, raw in enumerate(f, 1):
      line = sources._check_utf8(index, lineno, raw).rstrip('\n')
      parts = line.split('\t')
      if len(parts) < 3:
        raise InputError(f'{index}:{lineno}: expected headword<TAB>offset<TAB>length')
      head = parts[0]
      if head.startswith('00database') or head.startswith('00-database'):
        continue
      off, length = _dictd_int(parts[1]), _dictd_int(parts[2])
      entry = body[off:off + length].decode('utf-8', errors='strict').splitlines()
      for tline in entry[1:]:
        tline = tline.strip()
        if not tline or tline.startswith(('<', '"', '(', 'Note', 'see ', 'Synonym', 'See ')):
          continue
        # Grammar notes such as '<fem, n, sg>' follow a translation on its line.
        for t in re.split(r'[,;]', re.sub(r'<[^>]*>', '', tline)):
          m = _DICTD_SENSE.match(t)
          if m:
            _add(d, head, m.group(1))
  if not d:
    raise InputError(f'{index}: no entries read')
  return d


def read_dictionary(path: str, fmt: Optional[str] = None) -> Dictionary:
  """Reads a dictionary; `fmt` is muse, tsv or dictd, or guessed from the file."""
  if fmt is None:
    if path.endswith(('.index', '.dict.dz')):
      fmt = 'dictd'
      path = path.replace('.dict.dz', '.index')
    else:
      with open(path, 'rb') as f:
        first = f.readline()
      fmt = 'tsv' if b'\t' in first else 'muse'
  readers = {'muse': read_muse, 'tsv': read_tsv_dictionary, 'dictd': read_dictd}
  if fmt not in readers:
    raise ValueError(f'dictionary format {fmt!r}: expected one of {sorted(readers)}')
  if fmt != 'dictd':
    path = sources.resolve_files(path, 'dictionary')[0]
  d = readers[fmt](path)
  logging.info('dictionary %s (%s): %d words', path, fmt, len(d))
  return d


def top_k(d: Mapping[str, Sequence[str]], k: int) -> Dictionary:
  return {w: list(c[:k]) for w, c in d.items() if c}


_WORD = re.compile(r"\w+(?:['’-]\w+)*", re.UNICODE)


def tokenize_words(text: str) -> list[str]:
  return [w.lower() for w in _WORD.findall(text)]


def induce_dictionary(src_texts: Iterable[str], tgt_texts: Iterable[str], *, top: int = 3,
                      min_count: int = 3, max_df: float = 0.25) -> Dictionary:
  """A source->target dictionary from sentence pairs, by co-occurrence (Dice coefficient).

  CSR4mBART induces its dictionary with word2vec + VecMap on the bitext; on small corpora the
  co-occurrence Dice score is a robust stand-in with no extra dependency. Words seen fewer than
  `min_count` times, and target words in more than `max_df` of the pairs (function words),
  are left out.
  """
  src_count, tgt_count, pair_count = collections.Counter(), collections.Counter(), \
      collections.Counter()
  n = 0
  pairs = []
  for s, t in zip(src_texts, tgt_texts):
    sw, tw = set(tokenize_words(s)), set(tokenize_words(t))
    src_count.update(sw)
    tgt_count.update(tw)
    pairs.append((sw, tw))
    n += 1
  keep_t = {w for w, c in tgt_count.items() if c >= min_count and c <= max_df * n}
  keep_s = {w for w, c in src_count.items() if c >= min_count}
  for sw, tw in pairs:
    tw = tw & keep_t
    for s in sw & keep_s:
      for t in tw:
        pair_count[s, t] += 1
  best: dict[str, list[tuple[float, str]]] = collections.defaultdict(list)
  for (s, t), c in pair_count.items():
    if c >= min_count:
      best[s].append((2 * c / (src_count[s] + tgt_count[t]), t))
  return {s: [t for _, t in sorted(c, key=lambda x: (-x[0], x[1]))[:top]] for s, c in best.items()}


@gin.configurable(module='tasks.dictionaries')
def dictionary(path: str = gin.REQUIRED, fmt: Optional[str] = None, top: int = 3) -> Dictionary:
  """A dictionary file (muse/tsv/dictd) reduced to its first `top` candidates per word."""
  return top_k(read_dictionary(path, fmt), top)
