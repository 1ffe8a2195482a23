"""Code-switching restore (CSR4mBART, zanchangtong/CSR4mBART): restore a sentence from a copy in
which spans of words were replaced by dictionary translations.

CS(x), with the paper's defaults:
  * words are whitespace tokens; n = ceil(0.35 * #words) of them are switched;
  * the switched positions are spans whose lengths are Poisson(3.5) in words (a length of 0 is
    drawn again: CSR never deletes), starting at uniformly random words, until n are covered (the
    last span is cut so that exactly n positions are chosen);
  * a chosen word becomes a random one of its top-3 dictionary candidates (looked up lower-cased,
    without surrounding punctuation, which is kept, and capitalised again when the word was);
    a chosen word with no entry stays as it is.
The task reads a parallel corpus and uses both sides (even examples the first language, odd the
second), each switched with its own dictionary, tagged with its own language and restored in it:
  inputs = '<lang> ' + CS(x), targets = x.
With an encoder-decoder this is inputs -> targets; with a decoder (DecoderFeatureConverter and an
'inputs' length) it is a prefix LM. Randomness is stateless per example (seqio's per-example seeds),
so the same seed gives the same switches.
"""
from __future__ import annotations

import functools
from typing import Mapping, Optional, Sequence, Union

import gin
import seqio
import tensorflow as tf

from tasks import dictionaries, languages, sources
from tasks.registry import register_task

# Leading/trailing characters that are neither letters nor digits: kept around a switched word.
_AFFIXES = r'^([^\pL\pN]*)(.*?)([^\pL\pN]*)$'


class CodeSwitcher:
  """Holds one lookup table over all languages' dictionaries (key 'lang\\tword').

  Built eagerly when the task is built: a table created lazily inside a tf.data map function is
  cached as a graph tensor and breaks the next dataset (see ENVIRONMENT.md).
  """

  def __init__(self, dicts: Mapping[str, Mapping[str, Sequence[str]]], *, ratio: float = 0.35,
               span_lambda: float = 3.5, top: int = 3):
    if not 0 < ratio <= 1:
      raise ValueError(f'code-switching ratio must be in (0, 1], got {ratio}')
    self.ratio, self.span_lambda, self.top = ratio, span_lambda, top
    keys, cands, counts = [], [], []
    for lang, d in dicts.items():
      for word, c in d.items():
        c = list(c[:top])
        if c:
          keys.append(f'{lang}\t{word}')
          cands.append(c + [''] * (top - len(c)))
          counts.append(len(c))
    if not keys:
      raise ValueError('code switching: the dictionaries are empty')
    self.table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(keys), tf.range(len(keys), dtype=tf.int32)),
        default_value=-1)
    self.candidates = tf.constant(cands)
    self.num_candidates = tf.constant(counts, tf.int32)

  def span_mask(self, num_words: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Exactly ceil(ratio * num_words) positions, covered by Poisson-length spans."""
    n = tf.cast(tf.math.ceil(self.ratio * tf.cast(num_words, tf.float32) - 1e-6), tf.int32)
    pos = tf.range(num_words)

    def body(i, mask, count):
      s = tf.random.experimental.stateless_fold_in(seed, i)
      length = tf.random.stateless_poisson([], s, self.span_lambda, dtype=tf.int32)
      start = tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(s, 1),
                                          0, tf.maximum(num_words, 1), dtype=tf.int32)
      new = (pos >= start) & (pos < start + length) & ~mask
      take = new & (tf.cumsum(tf.cast(new, tf.int32)) <= n - count)
      return i + 1, mask | take, count + tf.reduce_sum(tf.cast(take, tf.int32))

    _, mask, _ = tf.while_loop(lambda i, m, c: c < n, body,
                               (tf.constant(0), tf.zeros([num_words], tf.bool), tf.constant(0)))
    return mask

  def switch(self, text: tf.Tensor, lang: tf.Tensor, seed: tf.Tensor):
    """(switched text, chosen positions, changed positions) of one sentence."""
    words = tf.strings.split(text)
    num_words = tf.size(words)
    chosen = self.span_mask(num_words, seed)
    prefix = tf.strings.regex_replace(words, _AFFIXES, r'\1')
    core = tf.strings.regex_replace(words, _AFFIXES, r'\2')
    suffix = tf.strings.regex_replace(words, _AFFIXES, r'\3')
    lower = tf.strings.lower(core, encoding='utf-8')
    idx = self.table.lookup(tf.strings.join([lang, '\t', lower]))
    has = idx >= 0
    safe = tf.maximum(idx, 0)
    u = tf.random.stateless_uniform([num_words], tf.random.experimental.stateless_fold_in(seed, -1))
    k = tf.minimum(tf.cast(u * tf.cast(tf.gather(self.num_candidates, safe), tf.float32), tf.int32),
                   self.top - 1)
    cand = tf.gather_nd(self.candidates, tf.stack([safe, k], axis=1))
    n_chars = tf.strings.length(cand, unit='UTF8_CHAR')
    first = tf.strings.substr(core, 0, 1, unit='UTF8_CHAR')
    capitalised = tf.not_equal(first, tf.strings.lower(first, encoding='utf-8'))
    cased = tf.where(capitalised,
                     tf.strings.join([tf.strings.upper(tf.strings.substr(cand, 0, 1, unit='UTF8_CHAR'),
                                                       encoding='utf-8'),
                                      tf.strings.substr(cand, tf.ones_like(n_chars), n_chars,
                                                        unit='UTF8_CHAR')]),
                     cand)
    replace = chosen & has
    out = tf.where(replace, tf.strings.join([prefix, cased, suffix]), words)
    return tf.strings.reduce_join(out, separator=' '), chosen, replace & tf.not_equal(out, words)


def both_sides(ds: tf.data.Dataset, langs: Sequence[str]) -> tf.data.Dataset:
  """{l1: x, l2: y} -> {'text': x, 'lang': l1}, {'text': y, 'lang': l2} (even/odd examples)."""
  def split(ex):
    return tf.data.Dataset.from_tensor_slices({'text': tf.stack([ex[l] for l in langs]),
                                               'lang': tf.constant(list(langs))})
  return ds.flat_map(split)


def make_csr_preprocessor(switcher: CodeSwitcher, tag_format: Optional[str]):
  @seqio.map_over_dataset(num_seeds=1)
  def code_switch_restore(ex, seed):
    switched, _, _ = switcher.switch(ex['text'], ex['lang'], seed)
    if tag_format:
      tag = tf.strings.regex_replace(tf.constant(tag_format), r'\{lang\}', ex['lang'])
      switched = tf.strings.join([tag, switched])
    return {'inputs': switched, 'targets': ex['text'], 'lang': ex['lang']}
  return code_switch_restore


def load_dictionaries(langs: Sequence[str], dicts: Union[str, Mapping[str, str]],
                      parallel_files: Mapping[str, Mapping[str, str]], top: int, what: str
                      ) -> dict[str, dict[str, list[str]]]:
  """{lang: dictionary from lang to the other language}; 'induced' builds them from the train pairs."""
  if dicts == 'induced':
    train = parallel_files['train']
    texts = {}
    for lang in langs:
      with open(sources.resolve_files(train[lang], what)[0], encoding='utf-8') as f:
        texts[lang] = [l.strip() for l in f]
    a, b = langs
    return {a: dictionaries.induce_dictionary(texts[a], texts[b], top=top),
            b: dictionaries.induce_dictionary(texts[b], texts[a], top=top)}
  if not isinstance(dicts, Mapping):
    raise ValueError(f"{what}.dictionaries: give {{lang: path}} or 'induced', got {dicts!r}")
  unknown = set(dicts) - set(langs)
  if unknown:
    raise ValueError(f'{what}.dictionaries: languages {sorted(unknown)} are not in the parallel '
                     f'files {list(langs)}')
  return {lang: dictionaries.top_k(dictionaries.read_dictionary(path), top)
          for lang, path in dicts.items()}


@gin.configurable(module='tasks.csr')
def csr_task(name: str = gin.REQUIRED,
             parallel_files: Mapping[str, Mapping[str, str]] = gin.REQUIRED,
             dictionaries: Union[str, Mapping[str, str]] = gin.REQUIRED,
             vocabulary: seqio.Vocabulary = gin.REQUIRED, *, ratio: float = 0.35,
             span_lambda: float = 3.5, top: int = 3, tag_format: Optional[str] = '<{lang}> '
             ) -> seqio.Task:
  """Registers a CSR task.

  parallel_files: {'train': {'en': 'train.en', 'de': 'train.de'}, 'validation': {...}}.
  dictionaries: {'en': 'en-de.txt', 'de': 'de-en.txt'} (MUSE, TSV or dictd; a side with no
    dictionary is restored from an unchanged copy), or 'induced' (from the training pairs).
  tag_format: the language tag put before the input ('{lang}' is replaced); None for no tag.
  """
  what = 'tasks.csr.csr_task'
  langs = list(parallel_files['train'])
  if len(langs) != 2:
    raise ValueError(f'{what}.parallel_files: expected two languages, got {langs}')
  for lang in langs:
    languages.check(lang, f'{what}.parallel_files')
  source = sources.parallel_text_source(parallel_files, what)
  switcher = CodeSwitcher(load_dictionaries(langs, dictionaries, parallel_files, top, what),
                          ratio=ratio, span_lambda=span_lambda, top=top)
  return register_task(
      name, source=source,
      preprocessors=[functools.partial(both_sides, langs=langs),
                     make_csr_preprocessor(switcher, tag_format),
                     seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
                     seqio.preprocessors.append_eos_after_trim],
      output_features={'inputs': seqio.Feature(vocabulary, add_eos=True),
                       'targets': seqio.Feature(vocabulary, add_eos=True)})
