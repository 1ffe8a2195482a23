"""Interlinear text (Guo et al. 2024, "A Novel Paradigm Boosting Translation Capabilities of LLMs").

Stage 2, `interlinear_task`: continual pretraining on documents in which every source sentence is
followed by its translation. The paper shows the format only in a figure, so everything is
configurable: the separator, language tags (or none), the order (source first, target first, both
directions as separate documents, or random per document) and the pairs per document. Documents
are built from whole tokenized pairs: a pair that does not fit in the sequence length starts the
next document, so a pair is only ever cut when it alone is longer than a sequence.

Stage 3, `translation_instruction_task`: translation fine-tuning examples whose instruction is
written in the source language ("source-language consistent"), or in English (the baseline).
inputs = instruction + source sentence, targets = translation.
"""
from __future__ import annotations

import functools
from typing import Mapping, Optional, Sequence

import gin
import seqio
import tensorflow as tf

from tasks import languages, sources
from tasks.registry import register_task

ORDERS = ('source_first', 'target_first', 'both', 'random')


def _pair_text(first: tf.Tensor, second: tf.Tensor, lang1: str, lang2: str,
               separator: str, tag_format: Optional[str]) -> tf.Tensor:
  tag = (lambda l: tag_format.format(lang=l)) if tag_format else (lambda l: '')
  return tf.strings.join([tag(lang1), first, separator, tag(lang2), second, separator])


def group_pairs(ds: tf.data.Dataset, *, max_pairs: int, max_tokens: int, key: str = 'pair',
                directions: Optional[Sequence[str]] = None, seed: int = 0) -> tf.data.Dataset:
  """Tokenized pairs -> {'targets': document} of up to `max_pairs` pairs and `max_tokens` tokens
  (EOS included). A pair that does not fit starts the next document.

  `directions`: two keys of alternative tokenizations of the same pair (source-first and
  target-first); the direction of document i is drawn statelessly from (seed, i). Without them,
  `key` is used. A finite input's last, unfinished document is emitted too, so a single pass over a
  split (evaluation, `tasks show`) loses no pair.
  """
  budget = max_tokens - 1  # room for EOS
  empty = tf.zeros([0], tf.int32)
  # One marked element after the input flushes the unfinished document (an infinite input never
  # reaches it). Its fields are empty tensors of the input's own structure.
  def blank_like(spec):
    shape = [0 if d is None else d for d in spec.shape]
    return tf.fill(shape, '') if spec.dtype == tf.string else tf.zeros(shape, spec.dtype)
  blank = tf.nest.map_structure(blank_like, ds.element_spec)
  ds = ds.map(lambda ex: (ex, False)).concatenate(
      tf.data.Dataset.from_tensors((blank, True)))

  def pick(ex, doc_idx):
    if not directions:
      return ex[key]
    d = tf.random.stateless_uniform([], tf.stack([tf.constant(seed, tf.int64), doc_idx]), 0, 2,
                                    dtype=tf.int64)
    return tf.cond(tf.equal(d, 0), lambda: ex[directions[0]], lambda: ex[directions[1]])

  def step(state, item):
    ex, end = item
    doc, n, doc_idx = state

    def flush():
      return (empty, 0, doc_idx + 1), (n > 0, doc)

    return tf.cond(end, flush, lambda: add_pair(state, ex))

  def add_pair(state, ex):
    doc, n, doc_idx = state
    pair = pick(ex, doc_idx)
    fits = tf.logical_or(tf.equal(n, 0), tf.size(doc) + tf.size(pair) <= budget)

    def add():
      new_doc = tf.concat([doc, pair], 0)[:budget]
      full = tf.equal(n + 1, max_pairs)
      return tf.cond(full,
                     lambda: ((empty, 0, doc_idx + 1), (True, new_doc)),
                     lambda: ((new_doc, n + 1, doc_idx), (False, empty)))

    def start_next():
      # The finished document goes out; this pair opens the next one, in that one's direction.
      first = pick(ex, doc_idx + 1)[:budget]
      return (first, 1, doc_idx + 1), (True, doc)

    return tf.cond(fits, add, start_next)

  ds = ds.scan((empty, tf.constant(0), tf.constant(0, tf.int64)), step)
  ds = ds.filter(lambda emit, doc: emit)
  return ds.map(lambda emit, doc: {'targets': tf.concat([doc, [1]], 0)})


@gin.configurable(module='tasks.interlinear')
def interlinear_task(name: str = gin.REQUIRED,
                     parallel_files: Optional[Mapping[str, Mapping[str, str]]] = None,
                     bibles: Optional[Mapping[str, str]] = None,
                     vocabulary: seqio.Vocabulary = gin.REQUIRED, *,
                     source_language: Optional[str] = None, order: str = 'source_first',
                     separator: str = '\n', tag_format: Optional[str] = '<{lang}> ',
                     pairs_per_document: int = 8, sequence_length: int = 512, seed: int = 0
                     ) -> seqio.Task:
  """Registers an interlinear-text LM task ('targets' only: a decoder-only LM; pack=True).

  parallel_files: {'train': {'en': ..., 'de': ...}, 'validation': {...}} line-aligned files, or
  bibles: {'sw': 'path/Swahili-NT.xml', 'en': 'sword:engWEB2015eb'} aligned by verse id.
  source_language: which language comes first in 'source_first' (default: the first given).
  order: source_first | target_first | both (each group of pairs in both directions, as two
    documents) | random (direction drawn per document).
  tag_format: put before each sentence ('{lang}' replaced), None for no tags.
  sequence_length: documents are cut at pair boundaries to fit it (keep it equal to the
    'targets' feature length).
  """
  what = 'tasks.interlinear.interlinear_task'
  if order not in ORDERS:
    raise ValueError(f'{what}.order: {order!r} is not one of {ORDERS}')
  if pairs_per_document < 1:
    raise ValueError(f'{what}.pairs_per_document must be >= 1')
  source, langs = _parallel_source(parallel_files, bibles, what)
  src = source_language or langs[0]
  if src not in langs:
    raise ValueError(f'{what}.source_language: {src!r} is not one of {langs}')
  tgt = [l for l in langs if l != src][0]

  directions = {'source_first': ['st'], 'target_first': ['ts'], 'both': ['st', 'ts'],
                'random': ['st', 'ts']}[order]
  texts = {'st': (src, tgt), 'ts': (tgt, src)}

  def to_pairs(ds):
    def fmt(ex):
      out = {}
      for d in directions:
        a, b = texts[d]
        out[d] = vocabulary.encode_tf(_pair_text(ex[a], ex[b], a, b, separator, tag_format))
      return out
    return ds.map(fmt, num_parallel_calls=tf.data.AUTOTUNE)

  def documents(ds):
    group = functools.partial(group_pairs, max_pairs=pairs_per_document,
                              max_tokens=sequence_length, seed=seed)
    if order == 'random':
      return group(ds, directions=directions)
    if order == 'both':
      # Both directions of the same pairs, as separate documents, alternating.
      a, b = group(ds, key='st'), group(ds, key='ts')
      return tf.data.Dataset.choose_from_datasets([a, b], tf.data.Dataset.range(2).repeat(),
                                                  stop_on_empty_dataset=True)
    return group(ds, key=directions[0])

  return register_task(
      name, source=source,
      preprocessors=[to_pairs, seqio.CacheDatasetPlaceholder(), documents],
      output_features={'targets': seqio.Feature(vocabulary, add_eos=True)})


def _parallel_source(parallel_files, bibles, what):
  if (parallel_files is None) == (bibles is None):
    raise ValueError(f'{what}: give exactly one of parallel_files and bibles')
  if parallel_files is not None:
    langs = list(parallel_files['train'])
    source = sources.parallel_text_source(parallel_files, what)
  else:
    langs = list(bibles)
    source = sources.bible_source(bibles, what)
  if len(langs) != 2:
    raise ValueError(f'{what}: expected two languages, got {langs}')
  for lang in langs:
    languages.check(lang, what)
  return source, langs


@gin.configurable(module='tasks.interlinear')
def translation_instruction_task(name: str = gin.REQUIRED,
                                 parallel_files: Optional[Mapping[str, Mapping[str, str]]] = None,
                                 bibles: Optional[Mapping[str, str]] = None,
                                 vocabulary: seqio.Vocabulary = gin.REQUIRED, *,
                                 instruction_language: str = 'source',
                                 directions: Optional[Sequence[str]] = None,
                                 templates: Optional[Mapping[str, str]] = None) -> seqio.Task:
  """Registers a stage-3 translation instruction task (inputs = prompt, targets = translation).

  instruction_language: 'source' (the paper's source-language consistent instructions), or a
    language code such as 'en' (the English-fixed baseline).
  directions: e.g. ['en-de', 'de-en'] (default: both directions of the pair), each pair yields
    one example per direction.
  templates: {lang: template} overriding tasks/languages.py INSTRUCTION_TEMPLATES
    ({src}, {tgt}: language names written in the template's language; {text}: the sentence).
  """
  what = 'tasks.interlinear.translation_instruction_task'
  source, langs = _parallel_source(parallel_files, bibles, what)
  directions = list(directions or [f'{langs[0]}-{langs[1]}', f'{langs[1]}-{langs[0]}'])
  pairs = []
  for d in directions:
    a, _, b = d.partition('-')
    if a not in langs or b not in langs or a == b:
      raise ValueError(f'{what}.directions: {d!r} is not a direction between {langs}')
    lang = a if instruction_language == 'source' else instruction_language
    languages.check(lang, f'{what}.instruction_language')
    # Render once with a placeholder to check the template and names now, not inside tf.data.
    marker = '\x00TEXT\x00'
    prompt = languages.instruction_prefix(a, b, lang, marker, templates, what)
    before, after = prompt.split(marker)
    pairs.append((a, b, before, after))

  def to_examples(ds):
    def fmt(ex):
      inputs = tf.stack([tf.strings.join([before, ex[a], after]) for a, b, before, after in pairs])
      targets = tf.stack([ex[b] for a, b, _, _ in pairs])
      return tf.data.Dataset.from_tensor_slices({'inputs': inputs, 'targets': targets})
    return ds.flat_map(fmt)

  return register_task(
      name, source=source,
      preprocessors=[to_examples, seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
                     seqio.preprocessors.append_eos_after_trim],
      output_features={'inputs': seqio.Feature(vocabulary, add_eos=True),
                       'targets': seqio.Feature(vocabulary, add_eos=True)})
