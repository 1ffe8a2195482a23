"""Where text comes from: text lines, TSV, line-aligned parallel files, CES-XML and SWORD Bibles
aligned by verse id, TFDS datasets.

Every reader checks its files up front and names the missing one, so a typo in a gin file fails at
set-up, not inside tf.data after the model has compiled.
"""
from __future__ import annotations

import codecs
import functools
import glob
import itertools
import logging
import os
import xml.etree.ElementTree as ET
from typing import Iterable, Iterator, Mapping, Optional, Sequence

import seqio
import tensorflow as tf
from pysword.modules import SwordModules

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
  """A seqio source of one example per line, {'text': line}, empty lines dropped.

  Every file is checked first (`check_text_files`): an empty file, one with only blank lines, or
  invalid UTF-8 is an error naming the file (and line), raised before any model is compiled."""
  resolved = {split: resolve_files(files, f'{what}[{split!r}]')
              for split, files in split_files.items() if files}
  for split, files in resolved.items():
    check_text_files(files, f'{what}[{split!r}]')
  return seqio.TextLineDataSource(resolved)


_CHUNK = 1 << 20


def check_text_files(paths: Sequence[str], what: str) -> None:
  """Refuses text that would train silently on nothing or on garbage: a file that is empty or has
  only blank lines, and any invalid UTF-8 (a file in another encoding, a truncated download).
  One error line names the file and, for bad bytes, the line. Reads in 1 MB chunks with Python's
  C decoder (~1 GB/s), so even large corpora are checked in seconds at set-up."""
  for path in paths:
    if os.path.getsize(path) == 0:
      raise InputError(f'{path}: empty file ({what})')
    decoder = codecs.getincrementaldecoder('utf-8')()
    lines_before, has_text = 0, False
    with open(path, 'rb') as f:
      while True:
        chunk = f.read(_CHUNK)
        try:
          text = decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as e:
          # The decoder's offset counts from the bytes it held back plus this chunk.
          held = len(e.object) - len(chunk)
          line = lines_before + e.object[:e.start].count(b'\n') - \
              (e.object[:held].count(b'\n') if held > 0 else 0) + 1
          raise InputError(f'{path}:{line}: invalid UTF-8 ({e.reason}) ({what})') from None
        has_text = has_text or bool(text.strip())
        lines_before += chunk.count(b'\n')
        if not chunk:
          break
    if not has_text:
      raise InputError(f'{path}: no usable examples: every line is blank ({what})')


def lines_to_text(ds: tf.data.Dataset) -> tf.data.Dataset:
  """TextLineDataSource yields bare strings; features are dicts. Empty lines carry no training signal."""
  return ds.map(_strip_line, num_parallel_calls=tf.data.AUTOTUNE).filter(_non_empty)


def _strip_line(line):
  return {'text': tf.strings.strip(line)}


def _non_empty(ex):
  return tf.strings.length(ex['text']) > 0


SWORD_PATHS = ('/usr/share/sword', os.path.expanduser('~/.sword'))


def read_sword_bible(module: str = 'engWEB2015eb', sword_path: str | None = None
                     ) -> Iterable[tuple[str, str]]:
  """(verse id 'BOOK.CHAPTER.VERSE', text) for every verse of a SWORD Bible module (pysword)."""
  paths = [sword_path] if sword_path else [p for p in SWORD_PATHS if os.path.isdir(p)]
  for path in paths:
    mods = SwordModules(path)
    found = mods.parse_modules()
    if module in found:
      bible = mods.get_bible_from_module(module)
      if hasattr(bible, '_decompressed_text'):
        # pysword inflates a whole compressed block (many chapters) for every verse it returns;
        # caching the blocks makes reading a Bible ~20x faster (minutes -> seconds).
        bible._decompressed_text = functools.lru_cache(maxsize=8)(bible._decompressed_text)
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


# ---------------------------------------------------------------------------------------------------
# Checked readers. Each one scans its files once at set-up: a misaligned corpus, invalid UTF-8 or a
# malformed row is an error that names file and line, and a row that can only be dropped (an empty
# line) is counted and reported, so nothing is ever skipped silently.

class InputError(ValueError):
  """Bad input data; the message's first line names the file (and line) at fault."""


def _check_utf8(path: str, lineno: int, raw: bytes) -> str:
  try:
    return raw.decode('utf-8')
  except UnicodeDecodeError as e:
    raise InputError(f'{path}:{lineno}: invalid UTF-8 ({e.reason} at byte {e.start})') from None


def scan_parallel_files(files: Mapping[str, str], what: str) -> dict:
  """Checks line-aligned files (one per language): same line count, valid UTF-8.

  Returns {'lines': n, 'skipped_empty': k, 'first_empty': [line numbers]}: a line that is empty
  on any side is dropped from every side (reported, never silently shifted).
  """
  paths = {lang: resolve_files(f, f'{what}[{lang!r}]') for lang, f in files.items()}
  for lang, p in paths.items():
    if len(p) != 1:
      raise InputError(f'{what}[{lang!r}]: expected one file, got {len(p)}: {p}')
  paths = {lang: p[0] for lang, p in paths.items()}
  handles = {lang: open(p, 'rb') for lang, p in paths.items()}
  n = empty = 0
  first_empty = []
  try:
    for lineno, rows in enumerate(itertools.zip_longest(*handles.values()), 1):
      if any(r is None for r in rows):
        counts = {paths[lang]: _count_lines(paths[lang]) for lang in handles}
        raise InputError(f'{what}: parallel files differ in length: ' +
                         ', '.join(f'{p} has {c} lines' for p, c in counts.items()))
      texts = [_check_utf8(paths[lang], lineno, r) for lang, r in zip(handles, rows)]
      n += 1
      if any(not t.strip() for t in texts):
        empty += 1
        if len(first_empty) < 5:
          first_empty.append(lineno)
  finally:
    for h in handles.values():
      h.close()
  if empty:
    logging.warning('%s: %d of %d aligned lines are empty on some side and are skipped on all '
                    'sides (first at lines %s)', what, empty, n, first_empty)
  return {'files': paths, 'lines': n, 'skipped_empty': empty, 'first_empty': first_empty}


def _count_lines(path: str) -> int:
  with open(path, 'rb') as f:
    return sum(1 for _ in f)


def parallel_text_source(split_files: Mapping[str, Mapping[str, str]], what: str
                         ) -> seqio.DataSource:
  """A seqio source of {lang: sentence} from line-aligned files, one file per language.

  `split_files` is {'train': {'en': 'train.en', 'de': 'train.de'}, 'validation': {...}}. Files are
  streamed (tf.data zip), so corpora of millions of lines work; pairs empty on a side are dropped
  after being counted by `scan_parallel_files`.
  """
  scans = {split: scan_parallel_files(files, f'{what}[{split!r}]')
           for split, files in split_files.items() if files}
  if not scans:
    raise ValueError(f'{what}: no parallel files given')
  langs = [list(s['files']) for s in scans.values()]
  if any(l != langs[0] for l in langs):
    raise ValueError(f'{what}: splits name different languages: {langs}')

  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed  # one file per language: order is the alignment; the Task shuffles
    files = scans[split]['files']
    ds = tf.data.Dataset.zip({lang: tf.data.TextLineDataset(p) for lang, p in files.items()})
    ds = ds.map(lambda ex: {k: tf.strings.strip(v) for k, v in ex.items()})
    return ds.filter(lambda ex: tf.reduce_all(
        tf.stack([tf.strings.length(v) > 0 for v in ex.values()])))

  source = seqio.FunctionDataSource(
      dataset_fn, splits=list(scans),
      num_input_examples={s: v['lines'] - v['skipped_empty'] for s, v in scans.items()})
  source.scan_report = scans  # what was read and skipped, for `python -m tasks show` and tests
  return source


def tsv_rows(path: str, columns: int, what: str, *, min_fields: int | None = None
             ) -> Iterator[tuple[int, list[str]]]:
  """(line number, fields) of a tab-separated file; rows with missing fields raise, naming the line.

  Empty lines are skipped (and counted by the caller); `min_fields` defaults to `columns`.
  """
  min_fields = columns if min_fields is None else min_fields
  with open(path, 'rb') as f:
    for lineno, raw in enumerate(f, 1):
      line = _check_utf8(path, lineno, raw).rstrip('\r\n')
      if not line.strip():
        continue
      fields = line.split('\t')
      if len(fields) < min_fields or any(not x.strip() for x in fields[:min_fields]):
        raise InputError(f'{path}:{lineno}: expected {min_fields} tab-separated non-empty fields, '
                         f'got {line!r} ({what})')
      yield lineno, [x.strip() for x in fields[:columns]]


def tsv_source(split_files: Mapping[str, Sequence[str]], columns: Sequence[str], what: str
               ) -> seqio.DataSource:
  """A seqio source of {column: text} from tab-separated files (validated up front)."""
  resolved = {split: resolve_files(files, f'{what}[{split!r}]')
              for split, files in split_files.items() if files}
  counts = {}
  for split, paths in resolved.items():
    counts[split] = sum(1 for p in paths for _ in tsv_rows(p, len(columns), what))
    if not counts[split]:
      raise InputError(f'{", ".join(paths)}: no usable examples (no non-empty row) ({what}[{split!r}])')

  def dataset_fn(split, shuffle_files, seed=None):
    del seed
    files = tf.data.Dataset.from_tensor_slices(resolved[split])
    if shuffle_files:
      files = files.shuffle(len(resolved[split]))
    ds = files.interleave(tf.data.TextLineDataset, cycle_length=1)
    ds = ds.filter(lambda line: tf.strings.length(tf.strings.strip(line)) > 0)
    def parse(line):
      fields = tf.strings.split(tf.strings.strip(line), '\t')
      return {c: tf.strings.strip(fields[i]) for i, c in enumerate(columns)}
    return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)

  return seqio.FunctionDataSource(dataset_fn, splits=list(resolved), num_input_examples=counts)


# ---------------------------------------------------------------------------------------------------
# Bibles: verse-aligned parallel text. CES-XML files (`<seg id="b.MAT.1.1">`, as in
# ../shared/data/mono/bible_nt) and SWORD modules (`sword:engWEB2015eb`) share verse ids BOOK.C.V.

def read_ces_bible(path: str) -> dict[str, str]:
  """{verse id 'MAT.1.1': text} of a CES-XML Bible; empty verses are left out (and logged)."""
  try:
    root = ET.parse(path).getroot()
  except ET.ParseError as e:
    raise InputError(f'{path}: not a valid CES-XML file ({e})') from None
  verses, empty = {}, 0
  for seg in root.iter('seg'):
    vid = seg.get('id', '')
    text = ' '.join(''.join(seg.itertext()).split())
    if not vid.startswith('b.'):
      continue
    if not text:
      empty += 1
      continue
    verses[vid[2:]] = text
  if not verses:
    raise InputError(f'{path}: no <seg id="b.BOOK.C.V"> verses found')
  if empty:
    logging.info('%s: %d empty verses skipped', path, empty)
  return verses


def read_bible(spec: str) -> dict[str, str]:
  """A Bible by file path (CES XML) or `sword:MODULE` (pysword, e.g. sword:engWEB2015eb)."""
  if spec.startswith('sword:'):
    return dict(read_sword_bible(spec[len('sword:'):]))
  return read_ces_bible(resolve_files(spec, 'bible')[0])


def align_bibles(bibles: Mapping[str, str], what: str) -> tuple[list[str], dict[str, list[str]]]:
  """Verse ids present in every Bible (in the first Bible's order) and the texts per language."""
  texts = {lang: read_bible(spec) for lang, spec in bibles.items()}
  first = next(iter(texts.values()))
  ids = [v for v in first if all(v in t for t in texts.values())]
  if not ids:
    raise InputError(f'{what}: the Bibles {dict(bibles)} share no verse ids')
  for lang, t in texts.items():
    missing = len(t) - len(ids)
    if missing:
      logging.info('%s: %d verses of %s have no counterpart and are left out', what, missing, lang)
  return ids, {lang: [t[v] for v in ids] for lang, t in texts.items()}


def bible_source(bibles: Mapping[str, str], what: str, validation_books: Sequence[str] = ('REV',)
                 ) -> seqio.DataSource:
  """A seqio source of {lang: verse, 'verse_id': id}, verse-aligned across the given Bibles.

  Split by book: the verses of `validation_books` are the 'validation' split, the rest 'train'.
  One language gives a monolingual source ({lang: verse}).
  """
  ids, texts = align_bibles(bibles, what)
  is_val = [v.split('.')[0] in validation_books for v in ids]
  split_rows = {'train': [i for i, val in enumerate(is_val) if not val],
                'validation': [i for i, val in enumerate(is_val) if val]}

  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed
    rows = split_rows[split]
    cols = {lang: [t[i] for i in rows] for lang, t in texts.items()}
    cols['verse_id'] = [ids[i] for i in rows]
    return tf.data.Dataset.from_tensor_slices(cols)

  return seqio.FunctionDataSource(
      dataset_fn, splits=[s for s, r in split_rows.items() if r],
      num_input_examples={s: len(r) for s, r in split_rows.items()})


# ---------------------------------------------------------------------------------------------------
# TFDS, for users with internet (not exercised offline): WMT translate configs give {lang: text}
# exactly like `parallel_text_source`; mC4 gives {'text': ...} like `text_line_source` + lines_to_text.

def tfds_source(tfds_name: str, splits: Optional[Mapping[str, str]] = None,
                tfds_data_dir: Optional[str] = None) -> seqio.DataSource:
  """seqio.TfdsDataSource, e.g. 'wmt19_translate/de-en:1.0.0' or 'c4/multilingual:3.1.0'.

  `splits` maps our split names to TFDS ones, e.g. {'train': 'train', 'validation': 'validation'}
  (mC4 languages are splits: {'train': 'sw', 'validation': 'sw-validation'}).
  """
  return seqio.TfdsDataSource(tfds_name=tfds_name, splits=splits, tfds_data_dir=tfds_data_dir)


def select_text(ds: tf.data.Dataset, key: str = 'text') -> tf.data.Dataset:
  """Keeps one text feature of a TFDS example as {'text': ...} (e.g. mC4's 'text')."""
  return ds.map(lambda ex: {'text': ex[key]}, num_parallel_calls=tf.data.AUTOTUNE)


def iter_texts(spec: str) -> Iterator[str]:
  """Every text of a source named by one string, for training a vocabulary:

    path/to/file.txt        one text a line (also globs)
    tsv:path/to/file.tsv    every field of every row
    ces:path/to/Bible.xml   every verse of a CES-XML Bible
    sword:MODULE            every verse of a SWORD Bible (pysword)
    tfds:NAME:SPLIT:KEY     one feature of a TFDS dataset (needs the data or internet)
  """
  kind, sep, rest = spec.partition(':')
  if not sep or len(kind) <= 1:  # a plain path (or a Windows drive letter)
    kind, rest = 'text', spec
  if kind == 'text':
    for path in resolve_files(rest, 'vocabulary source'):
      with open(path, 'rb') as f:
        for lineno, raw in enumerate(f, 1):
          line = _check_utf8(path, lineno, raw).strip()
          if line:
            yield line
  elif kind == 'tsv':
    for path in resolve_files(rest, 'vocabulary source'):
      for _, fields in tsv_rows(path, 1 << 30, 'vocabulary source', min_fields=1):
        yield from (x for x in fields if x)
  elif kind == 'ces':
    yield from read_ces_bible(resolve_files(rest, 'vocabulary source')[0]).values()
  elif kind == 'sword':
    for _, text in read_sword_bible(rest):
      yield text
  elif kind == 'tfds':
    import tensorflow_datasets as tfds
    name, split, key = rest.rsplit(':', 2)
    for ex in tfds.as_numpy(tfds.load(name, split=split)):
      yield ex[key].decode('utf-8')
  else:
    raise ValueError(f'vocabulary source {spec!r}: unknown kind {kind!r} '
                     '(text, tsv, ces, sword, tfds)')
