"""Cloned languages (Schäfer et al. 2024, "The role of language imbalance in cross-lingual
generalisation", antonschafer/xling-imbalance).

A cloned language is a copy of the training language with its own token ids: language k writes
token t as t + k*V for a fraction `frac_clone` of the ids (chosen by shuffling range(V) with
Python's random.Random(seed), as in the paper's code; pad 0 is never shifted), and shares the
other ids ("anchors"). The model vocabulary is V * num_languages.

`cloned_lm_task` registers the training task, in which the language of every training sequence
(after concatenating and cutting the text into `sequence_length` windows) is drawn with the given
probabilities, per stage of a schedule; and one validation task per language, `{name}_lang{k}`,
in which every window of the validation text is in language k, in the same order for every k.
"""
from __future__ import annotations

import random
from typing import Optional, Sequence, Union

import gin
import numpy as np
import seqio
import tensorflow as tf

from tasks import lm, schedules, sources
from tasks.registry import register_task


class ClonedVocabulary(seqio.Vocabulary):
  """A seqio vocabulary of `num_languages` copies of `base` (V = base.vocab_size ids each).

  encode()/encode_tf() give language-0 ids (the base ids); `encode_as(text, k)` and `clone_ids`
  give language k's. decode() accepts ids of any language (id % V).
  """

  def __init__(self, base: seqio.Vocabulary, num_languages: int = 2, frac_clone: float = 1.0,
               seed: int = 0):
    super().__init__(extra_ids=0)
    if num_languages < 1:
      raise ValueError(f'ClonedVocabulary.num_languages must be >= 1, got {num_languages}')
    if not 0 <= frac_clone <= 1:
      raise ValueError(f'ClonedVocabulary.frac_clone must be in [0, 1], got {frac_clone}')
    self.base, self.num_languages, self.frac_clone, self.seed = \
        base, num_languages, frac_clone, seed
    v = base.vocab_size
    ids = list(range(v))
    random.Random(seed).shuffle(ids)
    self.is_cloned = np.zeros(v, bool)
    self.is_cloned[ids[:int(frac_clone * v)]] = True
    self.is_cloned[base.pad_id] = False

  @property
  def base_size(self) -> int:
    return self.base.vocab_size

  @property
  def eos_id(self):
    return self.base.eos_id

  @property
  def unk_id(self):
    return self.base.unk_id

  @property
  def _base_vocab_size(self) -> int:
    return self.base.vocab_size * self.num_languages

  def _check_language(self, language):
    if not 0 <= language < self.num_languages:
      raise ValueError(f'language {language} is not in [0, {self.num_languages})')

  def clone_ids(self, ids, language: int) -> np.ndarray:
    """Base (language-0) ids -> language `language`'s ids."""
    self._check_language(language)
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= self.base_size):
      raise ValueError('clone_ids expects base ids in [0, V)')
    return np.where(self.is_cloned[ids], ids + language * self.base_size, ids)

  def clone_ids_tf(self, ids: tf.Tensor, language: tf.Tensor) -> tf.Tensor:
    is_cloned = tf.gather(tf.constant(self.is_cloned), ids)
    return tf.where(is_cloned, ids + tf.cast(language, ids.dtype) * self.base_size, ids)

  def encode_as(self, text: str, language: int) -> list[int]:
    return self.clone_ids(self.base.encode(text), language).tolist()

  def to_base(self, ids) -> np.ndarray:
    return np.asarray(ids) % self.base_size

  def language_of(self, ids) -> int:
    """The language of a sequence: k if any id is in [kV, (k+1)V) for k > 0, else 0.

    Raises when two cloned languages are mixed in one sequence.
    """
    langs = set(np.unique(np.asarray(ids) // self.base_size).tolist()) - {0}
    if len(langs) > 1:
      raise ValueError(f'ids mix languages {sorted(langs)}')
    return langs.pop() if langs else 0

  def _encode(self, s):
    return self.base.encode(s)

  def _encode_tf(self, s):
    return self.base.encode_tf(s)

  def decode(self, ids):
    if isinstance(ids, tf.Tensor):
      ids = ids.numpy()
    return self.base.decode(self.to_base(list(ids)).tolist())

  def _decode(self, ids):
    return self.base.decode(self.to_base(ids).tolist())

  def decode_tf(self, ids):
    return self.base.decode_tf(tf.math.floormod(ids, self.base_size))

  def _decode_tf(self, ids):
    return self.decode_tf(ids)

  def _same_base(self, other) -> bool:
    # seqio compares sentencepiece vocabularies by file path; a saved copy is the same model.
    a, b = self.base, other.base
    if isinstance(a, seqio.SentencePieceVocabulary) and isinstance(b, seqio.SentencePieceVocabulary):
      return a.sp_model == b.sp_model and a.extra_ids == b.extra_ids
    return a == b

  def __eq__(self, other):
    return (isinstance(other, ClonedVocabulary) and self._same_base(other) and
            (self.num_languages, self.frac_clone, self.seed) ==
            (other.num_languages, other.frac_clone, other.seed))

  def __hash__(self):
    return hash((self.num_languages, self.frac_clone, self.seed, self.base_size))

  def __str__(self):
    return (f'ClonedVocabulary(base={self.base}, num_languages={self.num_languages}, '
            f'frac_clone={self.frac_clone}, seed={self.seed})')


def eval_task_names(name: str, num_languages: int) -> list[str]:
  """The per-language validation tasks that `cloned_lm_task(name, ...)` registers."""
  return [f'{name}_lang{k}' for k in range(num_languages)]


def language_probabilities(num_languages: int, language_probs, p_clone, schedule, what: str
                           ) -> np.ndarray:
  """[n_stages, num_languages]. p_clone / schedule give the cloned languages' total probability,
  split evenly between them (as in the paper); language_probs gives every language's directly."""
  if language_probs is not None and (p_clone is not None or schedule is not None):
    raise ValueError(f'{what}: give language_probs, or p_clone / schedule, not both')
  # A schedule replaces p_clone, so a config can keep its P_CLONE default and add a SCHEDULE.
  if language_probs is not None:
    probs = np.asarray(language_probs, np.float64)
    probs = probs[None] if probs.ndim == 1 else probs
  else:
    p = schedules.parse_schedule(schedule if schedule is not None else
                                 (p_clone if p_clone is not None else 0.5), what)
    probs = schedules.stage_probs(p, [1.0] * (num_languages - 1))
  probs = schedules.check_probs(probs, what)
  if probs.shape[1] != num_languages:
    raise ValueError(f'{what}: {probs.shape[1]} language probabilities for {num_languages} '
                     'languages')
  return probs


@gin.configurable(module='tasks.cloned')
def cloned_lm_task(name: str = gin.REQUIRED, train_files: Sequence[str] = gin.REQUIRED,
                   validation_files: Sequence[str] = (),
                   vocabulary: seqio.Vocabulary = gin.REQUIRED, num_languages: int = 2,
                   frac_clone: float = 1.0,
                   language_probs: Optional[Sequence] = None, p_clone: Optional[float] = None,
                   schedule: Optional[Union[str, Sequence[float]]] = None,
                   train_steps: Optional[int] = None, batch_size: Optional[int] = None,
                   sequence_length: int = 512, seed: int = 0, clone_seed: int = 0,
                   shuffle_buffer_size: int = 10_000) -> seqio.Task:
  """Registers `name` (train split) and `{name}_lang{k}` (validation split) for k < num_languages.

  vocabulary: the base vocabulary (wrapped in a ClonedVocabulary with `clone_seed`), or a
    ClonedVocabulary already.
  p_clone: probability that a sequence is in a cloned language (0.1 is "90/10"; default 0.5).
  schedule: '0.1_0.9' or '0.05_0.65_0.65_0.65': p_clone per equal-length stage (replaces
    p_clone when given); needs
    train_steps and batch_size (stage = index * n_stages // (train_steps * batch_size)).
  language_probs: [p_0, ..., p_{n-1}] or one such row per stage, instead of p_clone/schedule.
  sequence_length: the window length; must equal the 'targets' feature length (DataConfig.pack
    = False: the windows are already full).
  seed: the language draw (per sequence, stateless) and the line shuffle.
  """
  what = 'tasks.cloned.cloned_lm_task'
  if isinstance(vocabulary, ClonedVocabulary):
    if (vocabulary.num_languages, vocabulary.frac_clone) != (num_languages, frac_clone):
      raise ValueError(f'{what}: the ClonedVocabulary has {vocabulary.num_languages} languages, '
                       f'frac_clone {vocabulary.frac_clone}; the task asks for {num_languages}, '
                       f'{frac_clone}')
    vocab = vocabulary
  else:
    vocab = ClonedVocabulary(vocabulary, num_languages, frac_clone, clone_seed)
  probs = language_probabilities(num_languages, language_probs, p_clone, schedule, what)
  total = None
  if probs.shape[0] > 1:
    if not train_steps or not batch_size:
      raise ValueError(f'{what}: a schedule of {probs.shape[0]} stages needs train_steps and '
                       'batch_size (bind them to %TRAIN_STEPS and %BATCH_SIZE)')
    total = train_steps * batch_size

  def check_length(ds, sequence_length=None):
    if sequence_length and sequence_length.get('targets') not in (None, length):
      raise ValueError(f"{what}.sequence_length={length} but the 'targets' feature length is "
                       f"{sequence_length['targets']}")
    return ds

  length = sequence_length
  tokenize = [sources.lines_to_text,
              lambda ds: ds.map(lambda ex: {'targets': ex['text']}),
              seqio.preprocessors.tokenize, seqio.preprocessors.append_eos,
              seqio.CacheDatasetPlaceholder()]
  features = {'targets': seqio.Feature(vocab, add_eos=True)}

  def assign_languages(ds):
    # Lines are shuffled here, before windows are cut and numbered, so that sequence i of the
    # stream is sequence i of training and its stage is exact (seqio's own shuffle, after the
    # preprocessors, would blur stage boundaries); the source declares internal shuffling.
    ds = ds.shuffle(shuffle_buffer_size, seed=seed)
    ds = lm.concat_and_chunk(ds, length).enumerate()

    def shift(i, ex):
      lang = schedules.sample_language(i, probs, total, seed)
      return {'targets': vocab.clone_ids_tf(ex['targets'], lang), 'language': lang}
    return ds.map(shift, num_parallel_calls=tf.data.AUTOTUNE)

  train_source = seqio.FileDataSource(
      read_file_fn=tf.data.TextLineDataset,
      split_to_filepattern={'train': sources.resolve_files(train_files, f'{what}.train_files')},
      performs_internal_shuffling=True)
  task = register_task(name, source=train_source,
                       preprocessors=tokenize + [check_length, assign_languages],
                       output_features=features, shuffle_buffer_size=None)

  if validation_files:
    val_files = sources.resolve_files(validation_files, f'{what}.validation_files')
    for k, task_name in enumerate(eval_task_names(name, num_languages)):
      def in_language(ds, k=k):
        ds = lm.concat_and_chunk(ds, length, keep_remainder=True)  # a pass scores every token
        return ds.map(lambda ex: {'targets': vocab.clone_ids_tf(ex['targets'], k),
                                  'language': tf.constant(k, tf.int32)})
      register_task(task_name,
                    source=seqio.TextLineDataSource({'validation': val_files}),
                    preprocessors=tokenize + [check_length, in_language],
                    output_features=features)
  return task
