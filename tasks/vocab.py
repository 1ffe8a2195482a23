"""SentencePiece vocabularies: train one on any text files, or load one, as a seqio vocabulary.

Ids follow T5: pad=0, eos=1, unk=2, no bos. A trained model is cached under a name derived from its
inputs (file paths, sizes, mtimes, options), so re-running a config reuses it.
"""
from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import os
from typing import Optional, Sequence

import gin
import seqio
import sentencepiece as spm

from tasks import cloned, sources

DEFAULT_CACHE = os.path.join(os.path.expanduser('~'), '.cache', 't5x_like', 'spm')


def train_sentencepiece(files: Sequence[str], model_prefix: str, vocab_size: int, *,
                        model_type: str = 'unigram', character_coverage: float = 0.9995,
                        input_sentence_size: int = 2_000_000,
                        user_defined_symbols: Sequence[str] = (),
                        sentence_iterator=None) -> str:
  """Trains a T5-style model (pad 0, eos 1, unk 2, no bos) on `files` or on `sentence_iterator`.

  `user_defined_symbols` are kept as single pieces (language tags such as '<en>').
  """
  if sentence_iterator is not None:
    first = next(sentence_iterator, None)
    if first is None:
      raise sources.InputError(f'no text to train a SentencePiece model {model_prefix} on: the '
                               'sources gave no non-empty line')
    sentence_iterator = itertools.chain([first], sentence_iterator)
  else:
    sources.check_text_files(files, f'SentencePiece training input for {model_prefix}')
  os.makedirs(os.path.dirname(os.path.abspath(model_prefix)), exist_ok=True)
  tmp_prefix = model_prefix + '.tmp'  # no pid: the model's bytes (hashed by run_dir) hold this prefix
  source = ({'sentence_iterator': sentence_iterator} if sentence_iterator is not None
            else {'input': ','.join(files)})
  spm.SentencePieceTrainer.train(
      **source, model_prefix=tmp_prefix, vocab_size=vocab_size, model_type=model_type,
      user_defined_symbols=list(user_defined_symbols),
      character_coverage=character_coverage, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      input_sentence_size=input_sentence_size, shuffle_input_sentence=True,
      minloglevel=2, num_threads=os.cpu_count() or 1)
  # Rename at the end: a half-written model is never picked up from the cache.
  for ext in ('.model', '.vocab'):
    os.replace(tmp_prefix + ext, model_prefix + ext)
  return model_prefix + '.model'


@gin.configurable
def sentencepiece_vocabulary(model_path: Optional[str] = None, *, train_files: Sequence[str] = (),
                             vocab_size: int = 8000, model_type: str = 'unigram',
                             extra_ids: int = 0, cache_dir: Optional[str] = None,
                             user_defined_symbols: Sequence[str] = ()
                             ) -> seqio.SentencePieceVocabulary:
  """Loads `model_path`, or trains a vocabulary on `train_files` (cached) when no path is given."""
  if model_path:
    if not os.path.exists(model_path):
      raise FileNotFoundError(f'sentencepiece_vocabulary.model_path: {model_path} does not exist')
    return seqio.SentencePieceVocabulary(model_path, extra_ids=extra_ids)
  files = sources.resolve_files(train_files, 'sentencepiece_vocabulary.train_files')
  key = json.dumps([[f, os.path.getsize(f), int(os.path.getmtime(f))] for f in files] +
                   [vocab_size, model_type] + ([list(user_defined_symbols)] if user_defined_symbols
                                               else []))
  prefix = os.path.join(cache_dir or DEFAULT_CACHE,
                        f'spm{vocab_size}_{hashlib.sha1(key.encode()).hexdigest()[:12]}')
  if not os.path.exists(prefix + '.model'):
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    # Processes of one job (and parallel tests) share the cache: the first trains, the others wait
    # and then find the model instead of training it again beside it.
    with open(prefix + '.lock', 'w') as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      if not os.path.exists(prefix + '.model'):
        train_sentencepiece(files, prefix, vocab_size, model_type=model_type,
                            user_defined_symbols=user_defined_symbols)
  return seqio.SentencePieceVocabulary(prefix + '.model', extra_ids=extra_ids)


def load_vocabulary(directory: str) -> seqio.Vocabulary:
  """What t5x_like.vocabulary.save_vocabulary wrote, as seqio vocabularies (see its docstring)."""
  with open(os.path.join(directory, 'vocabulary.json')) as f:
    meta = json.load(f)
  if meta['type'] == 'sentencepiece':
    return seqio.SentencePieceVocabulary(os.path.join(directory, 'spm.model'),
                                         extra_ids=meta['extra_ids'])
  if meta['type'] == 'cloned':
    base = seqio.SentencePieceVocabulary(os.path.join(directory, 'spm.model'),
                                         extra_ids=meta['extra_ids'])
    vocab = cloned.ClonedVocabulary(base, num_languages=meta['num_languages'],
                                    frac_clone=meta['frac_clone'], seed=meta['seed'])
    if 'cloned_ids' in meta and sorted(meta['cloned_ids']) != vocab.is_cloned.nonzero()[0].tolist():
      raise ValueError(f'{directory}/vocabulary.json: cloned_ids differ from the ones seed '
                       f"{meta['seed']} gives")
    return vocab
  raise ValueError(f"{directory}/vocabulary.json: unknown vocabulary type {meta['type']!r}")
