"""SentencePiece vocabularies: train one on any text files, or load one, as a seqio vocabulary.

Ids follow T5: pad=0, eos=1, unk=2, no bos. A trained model is cached under a name derived from its
inputs (file paths, sizes, mtimes, options), so re-running a config reuses it.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Optional, Sequence

import gin
import seqio

from tasks import sources

DEFAULT_CACHE = os.path.join(os.path.expanduser('~'), '.cache', 't5x_like', 'spm')


def train_sentencepiece(files: Sequence[str], model_prefix: str, vocab_size: int, *,
                        model_type: str = 'unigram', character_coverage: float = 0.9995,
                        input_sentence_size: int = 2_000_000) -> str:
  import sentencepiece as spm
  os.makedirs(os.path.dirname(os.path.abspath(model_prefix)), exist_ok=True)
  tmp_prefix = model_prefix + '.tmp'
  spm.SentencePieceTrainer.train(
      input=','.join(files), model_prefix=tmp_prefix, vocab_size=vocab_size, model_type=model_type,
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
                             extra_ids: int = 0, cache_dir: Optional[str] = None
                             ) -> seqio.SentencePieceVocabulary:
  """Loads `model_path`, or trains a vocabulary on `train_files` (cached) when no path is given."""
  if model_path:
    if not os.path.exists(model_path):
      raise FileNotFoundError(f'sentencepiece_vocabulary.model_path: {model_path} does not exist')
    return seqio.SentencePieceVocabulary(model_path, extra_ids=extra_ids)
  files = sources.resolve_files(train_files, 'sentencepiece_vocabulary.train_files')
  key = json.dumps([[f, os.path.getsize(f), int(os.path.getmtime(f))] for f in files] +
                   [vocab_size, model_type])
  prefix = os.path.join(cache_dir or DEFAULT_CACHE,
                        f'spm{vocab_size}_{hashlib.sha1(key.encode()).hexdigest()[:12]}')
  if not os.path.exists(prefix + '.model'):
    train_sentencepiece(files, prefix, vocab_size, model_type=model_type)
  return seqio.SentencePieceVocabulary(prefix + '.model', extra_ids=extra_ids)


def save_vocabulary(vocab: seqio.Vocabulary, directory: str) -> None:
  """Writes a run's vocabulary next to its checkpoints: `spm.model` + `vocabulary.json`.

  Exporters and evaluators read it back with `load_vocabulary`, so a model dir is self-contained.
  """
  import shutil
  os.makedirs(directory, exist_ok=True)
  if isinstance(vocab, seqio.SentencePieceVocabulary):
    shutil.copyfile(vocab.sentencepiece_model_file, os.path.join(directory, 'spm.model'))
    meta = {'type': 'sentencepiece', 'extra_ids': vocab.extra_ids, 'vocab_size': vocab.vocab_size}
  else:
    raise TypeError(f'cannot save a vocabulary of type {type(vocab).__name__}')
  with open(os.path.join(directory, 'vocabulary.json'), 'w') as f:
    json.dump(meta, f, indent=2)


def load_vocabulary(directory: str) -> seqio.Vocabulary:
  with open(os.path.join(directory, 'vocabulary.json')) as f:
    meta = json.load(f)
  if meta['type'] == 'sentencepiece':
    return seqio.SentencePieceVocabulary(os.path.join(directory, 'spm.model'),
                                         extra_ids=meta['extra_ids'])
  raise ValueError(f"{directory}/vocabulary.json: unknown vocabulary type {meta['type']!r}")
