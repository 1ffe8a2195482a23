"""Language-modelling tasks on plain text: decoder-only LM and the encoder-decoder prefix-LM objective.

A task builder is a gin configurable that registers a seqio Task and returns it, so a gin file names the
data and the vocabulary right where it picks the task:

    train/DataConfig.mixture_or_task = @tasks.lm.text_lm_task()
    tasks.lm.text_lm_task.name = 'bible_web'
"""
from __future__ import annotations

import functools
from typing import Sequence

import gin
import seqio
import tensorflow as tf

from tasks import sources
from tasks.registry import register_task


@gin.configurable(module='tasks.lm')
def text_lm_task(name: str = gin.REQUIRED, train_files: Sequence[str] = gin.REQUIRED,
                 validation_files: Sequence[str] = (),
                 vocabulary: seqio.Vocabulary = gin.REQUIRED) -> seqio.Task:
  """Each line is one example, trained on as `targets` (decoder-only LM; packed by the converter)."""
  source = sources.text_line_source({'train': train_files, 'validation': validation_files},
                                    'tasks.lm.text_lm_task')
  return register_task(
      name, source=source,
      preprocessors=[sources.lines_to_text, functools.partial(seqio.preprocessors.rekey,
                                                              key_map={'targets': 'text'}),
                     seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features={'targets': seqio.Feature(vocabulary, add_eos=True)})


@seqio.map_over_dataset(num_seeds=1)
def _split_prefix(ex, seed):
  """T5's prefix-LM objective: a random split point; inputs = before it, targets = after it."""
  tokens = ex['targets']
  n = tf.shape(tokens)[0]
  k = tf.random.stateless_uniform([], seed, minval=1, maxval=tf.maximum(n, 2), dtype=tf.int32)
  return {'inputs': tokens[:k], 'targets': tokens[k:]}


@gin.configurable(module='tasks.lm')
def prefix_lm_task(name: str = gin.REQUIRED, train_files: Sequence[str] = gin.REQUIRED,
                   validation_files: Sequence[str] = (),
                   vocabulary: seqio.Vocabulary = gin.REQUIRED) -> seqio.Task:
  """Encoder-decoder pretraining on plain text: each line split at a random token into inputs/targets."""
  source = sources.text_line_source({'train': train_files, 'validation': validation_files},
                                    'tasks.lm.prefix_lm_task')
  return register_task(
      name, source=source,
      preprocessors=[sources.lines_to_text, functools.partial(seqio.preprocessors.rekey,
                                                              key_map={'targets': 'text'}),
                     seqio.preprocessors.tokenize, _filter_short, _split_prefix,
                     seqio.preprocessors.append_eos_after_trim],
      output_features={'inputs': seqio.Feature(vocabulary, add_eos=True),
                       'targets': seqio.Feature(vocabulary, add_eos=True)})


def _filter_short(ds):
  return ds.filter(lambda ex: tf.shape(ex['targets'])[0] >= 2)


def concat_and_chunk(ds: tf.data.Dataset, length: int, key: str = 'targets',
                     keep_remainder: bool = False) -> tf.data.Dataset:
  """Concatenates the token streams of all examples (each ending in EOS) and cuts them into
  windows of exactly `length` tokens: GPT-style LM sequences, as in Schäfer et al.'s training and
  per-window evaluation. Documents may span windows; the last partial window of a finite input is
  dropped, or, with `keep_remainder` (single passes over a split), kept as a shorter window that the
  converter pads.

  The converter then needs no packing (DataConfig.pack = False): it shifts the targets into
  decoder_input_tokens and weights every token.
  """
  tokens = ds.map(lambda ex: ex[key]).unbatch()
  return tokens.batch(length, drop_remainder=not keep_remainder).map(lambda t: {key: t})
