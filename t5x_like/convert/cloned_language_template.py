"""Encode text as cloned language k (copied next to an exported cloned-vocabulary tokenizer).

Language k's copy of base token t is id t + k*V for the base ids listed in cloned_vocabulary.json; other
tokens keep their base id. See README_cloned_languages.md.
"""
import functools
import json
import os

_HERE = os.path.dirname(os.path.abspath(__file__))


@functools.lru_cache(maxsize=None)
def _meta(directory: str = _HERE):
  with open(os.path.join(directory, 'cloned_vocabulary.json')) as f:
    meta = json.load(f)
  return meta['base_vocab_size'], frozenset(meta['cloned_ids']), meta['num_languages']


def to_language(ids, k: int, directory: str = _HERE):
  """Maps language-0 ids to language k."""
  v, cloned, n = _meta(directory)
  if not 0 <= k < n:
    raise ValueError(f'language {k} not in 0..{n - 1}')
  return [i + k * v if i in cloned else i for i in ids]


def encode_as_language(tokenizer, text: str, k: int, directory: str = _HERE, **kwargs):
  """`tokenizer(text)['input_ids']` with every cloned token moved to language k."""
  return to_language(tokenizer(text, **kwargs)['input_ids'], k, directory)


def language_of(tokenizer, ids, directory: str = _HERE):
  """Per id: its language (0..n-1), or None for an uncloned token, which all languages share."""
  v, cloned, _ = _meta(directory)
  return [i // v if i % v in cloned else None for i in ids]
