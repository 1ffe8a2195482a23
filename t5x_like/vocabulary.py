"""A run's vocabulary without TensorFlow or seqio: the `spm.model` + `vocabulary.json` that
save_vocabulary writes next to the checkpoints (its docstring is the format), and reads back.

`SentencePieceVocabulary` and `ClonedVocabulary` give the same ids and text as seqio's
SentencePieceVocabulary and tasks.cloned.ClonedVocabulary (tests/test_vocabulary.py compares them);
they serve the tools that run where TensorFlow is not installed: eval, decoding, the converters.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from typing import Sequence

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2


class SentencePieceVocabulary:
  """seqio.SentencePieceVocabulary's ids: the model's pieces, then `extra_ids` sentinels
  (`<extra_id_{E-1}>` first, as seqio adds them)."""

  def __init__(self, model_file: str, extra_ids: int = 0):
    with open(model_file, 'rb') as f:
      model = sentencepiece_model_pb2.ModelProto.FromString(f.read())
    for i in reversed(range(extra_ids)):
      model.pieces.add(piece=f'▁<extra_id_{i}>', score=0.0,
                       type=sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED)
    self.tokenizer = spm.SentencePieceProcessor()
    self.tokenizer.LoadFromSerializedProto(model.SerializeToString())
    self.sentencepiece_model_file = model_file
    self.extra_ids = extra_ids

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.GetPieceSize()

  @property
  def pad_id(self) -> int:
    return 0

  @property
  def eos_id(self) -> int:
    return self.tokenizer.eos_id()

  @property
  def unk_id(self) -> int:
    return self.tokenizer.unk_id()

  def encode(self, text: str) -> list[int]:
    return self.tokenizer.EncodeAsIds(text)

  def decode(self, ids: Sequence[int]) -> str:
    """As seqio: unknown ids -> unk, everything after the first EOS dropped."""
    ids = [self.unk_id if int(i) >= self.vocab_size else int(i) for i in ids]
    if self.eos_id in ids:
      ids = ids[:ids.index(self.eos_id) + 1]
    return self.tokenizer.DecodeIds(ids)


class ClonedVocabulary:
  """tasks.cloned.ClonedVocabulary's numpy half: language k writes base id t as t + k*V when t is
  cloned; any id decodes as id % V."""

  def __init__(self, base: SentencePieceVocabulary, num_languages: int, frac_clone: float,
               seed: int, cloned_ids=None):
    self.base, self.num_languages, self.frac_clone, self.seed = \
        base, num_languages, frac_clone, seed
    v = base.vocab_size
    self.is_cloned = np.zeros(v, bool)
    if cloned_ids is None:  # the same shuffle as tasks.cloned
      ids = list(range(v))
      random.Random(seed).shuffle(ids)
      cloned_ids = ids[:int(frac_clone * v)]
    self.is_cloned[list(cloned_ids)] = True
    self.is_cloned[base.pad_id] = False

  @property
  def base_size(self) -> int:
    return self.base.vocab_size

  @property
  def vocab_size(self) -> int:
    return self.base_size * self.num_languages

  @property
  def eos_id(self) -> int:
    return self.base.eos_id

  @property
  def unk_id(self) -> int:
    return self.base.unk_id

  @property
  def pad_id(self) -> int:
    return 0

  def clone_ids(self, ids, language: int) -> np.ndarray:
    if not 0 <= language < self.num_languages:
      raise ValueError(f'language {language} is not in [0, {self.num_languages})')
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= self.base_size):
      raise ValueError('clone_ids expects base ids in [0, V)')
    return np.where(self.is_cloned[ids], ids + language * self.base_size, ids)

  def encode(self, text: str) -> list[int]:
    return self.base.encode(text)

  def encode_as(self, text: str, language: int) -> list[int]:
    return self.clone_ids(self.base.encode(text), language).tolist()

  def to_base(self, ids) -> np.ndarray:
    return np.asarray(ids) % self.base_size

  def language_of(self, ids) -> int:
    langs = set(np.unique(np.asarray(ids) // self.base_size).tolist()) - {0}
    if len(langs) > 1:
      raise ValueError(f'ids mix languages {sorted(langs)}')
    return langs.pop() if langs else 0

  def decode(self, ids) -> str:
    return self.base.decode(self.to_base(list(ids)).tolist())


def save_vocabulary(vocab, directory: str) -> None:
  """Writes a run's vocabulary next to its checkpoints: `spm.model` + `vocabulary.json`.

  Exporters and evaluators read it back with `load_vocabulary` (here, without TensorFlow; or
  tasks.vocab.load_vocabulary, as seqio vocabularies), so a model dir is self-contained. `vocab` is
  seqio's SentencePieceVocabulary or this module's, or a cloned vocabulary over one (both families
  name their parts alike: sentencepiece_model_file, extra_ids; base, num_languages, frac_clone, seed,
  is_cloned), so this layer needs neither seqio nor tasks.
  `vocabulary.json` is one of:

    {"type": "sentencepiece", "extra_ids": E, "vocab_size": V}
        `spm.model` with E extra ids (sentinels) after its pieces; V includes them.
    {"type": "cloned", "num_languages": n, "frac_clone": f, "seed": s, "base_vocab_size": V,
     "extra_ids": E, "vocab_size": n * V, "num_cloned": c, "cloned_ids": [...]}
        A cloned vocabulary (tasks.cloned.ClonedVocabulary, or ClonedVocabulary here) over the sentencepiece `spm.model` with E extra ids (V
        includes them). Language k (0 = the original) writes token t as t + k*V when t is one of
        the `cloned_ids` (the first c = int(f*V) ids of range(V) shuffled by Python
        random.Random(s), pad 0 excluded), else as t (shared "anchor" ids). Any id decodes as
        id % V. `cloned_ids` is listed so that other tools need not reproduce Python's shuffle.
  """
  os.makedirs(directory, exist_ok=True)
  if hasattr(vocab, 'is_cloned'):
    base = vocab.base
    if not hasattr(base, 'sentencepiece_model_file'):
      raise TypeError(f'cannot save a cloned vocabulary over {type(base).__name__}')
    model_file = base.sentencepiece_model_file
    meta = {'type': 'cloned', 'num_languages': vocab.num_languages,
            'frac_clone': vocab.frac_clone, 'seed': vocab.seed,
            'base_vocab_size': base.vocab_size, 'extra_ids': base.extra_ids,
            'vocab_size': vocab.vocab_size, 'pad_id': 0, 'eos_id': base.eos_id,
            'unk_id': base.unk_id, 'num_cloned': int(vocab.is_cloned.sum()),
            'cloned_ids': [int(i) for i in vocab.is_cloned.nonzero()[0]]}
  elif hasattr(vocab, 'sentencepiece_model_file'):
    model_file = vocab.sentencepiece_model_file
    meta = {'type': 'sentencepiece', 'extra_ids': vocab.extra_ids, 'vocab_size': vocab.vocab_size}
  else:
    raise TypeError(f'cannot save a vocabulary of type {type(vocab).__name__}')
  shutil.copyfile(model_file, os.path.join(directory, 'spm.model'))
  with open(os.path.join(directory, 'vocabulary.json'), 'w') as f:
    json.dump(meta, f, indent=2)


def load_vocabulary(directory: str):
  """DIR/spm.model + DIR/vocabulary.json -> the vocabulary it describes."""
  meta_path = os.path.join(directory, 'vocabulary.json')
  if not os.path.exists(meta_path):
    raise FileNotFoundError(f'{meta_path} not found: is {os.path.dirname(directory)} a model dir '
                            'or an export written by this project?')
  with open(meta_path) as f:
    meta = json.load(f)
  base = SentencePieceVocabulary(os.path.join(directory, 'spm.model'),
                                 extra_ids=meta.get('extra_ids') or 0)
  if meta['type'] == 'sentencepiece':
    return base
  if meta['type'] == 'cloned':
    return ClonedVocabulary(base, meta['num_languages'], meta['frac_clone'], meta['seed'],
                            meta.get('cloned_ids'))
  raise ValueError(f"{meta_path}: unknown vocabulary type {meta['type']!r}")
