"""Model batches holding the same text in every cloned language.

Text is tokenized once with the base (language-0) ids; language k's batch is the same array mapped
through `ClonedVocabulary.clone_ids(ids, k)`. Batches of different languages are therefore parallel
token for token and position for position, which hidden-state and gradient alignment rely on.

Two window layouts:
- 'packed': one line per example (+ EOS), packed greedily into windows with segment ids and positions
  that restart per example -- what seqio's DecoderFeatureConverter(pack=True) gives the trainer for
  line-per-example tasks;
- 'stream': all lines joined by EOS into one token stream cut into windows of `length` -- continuous
  text, as in the cloned-language paper's 512-token windows.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

EOS_ID = 1


def num_languages(vocab) -> int:
  return int(getattr(vocab, 'num_languages', 1))


def encode_base(vocab, text: str) -> list[int]:
  """Language-0 ids of `text`."""
  if hasattr(vocab, 'encode_as'):
    return list(vocab.encode_as(text, 0))
  return list(vocab.encode(text))


def to_language(vocab, ids: np.ndarray, language: int) -> np.ndarray:
  """Language-0 ids -> the same ids in cloned language `language` (pad 0 stays 0)."""
  ids = np.asarray(ids)
  if language == 0:
    return ids
  if not hasattr(vocab, 'clone_ids'):
    raise ValueError(f'language {language} asked for, but the model vocabulary '
                     f'({type(vocab).__name__}) is not a cloned vocabulary')
  return np.asarray(vocab.clone_ids(ids, language), dtype=ids.dtype)


def pack_windows(token_lists: Sequence[Sequence[int]], length: int, *, mode: str = 'packed',
                 max_windows: Optional[int] = None, eos_id: int = EOS_ID) -> dict:
  """Decoder batches [N, length] from tokenized lines (see the module doc for the two modes)."""
  if mode == 'packed':
    rows = _pack(token_lists, length, eos_id, max_windows)
  elif mode == 'stream':
    rows = _stream(token_lists, length, eos_id, max_windows)
  else:
    raise ValueError(f"window mode {mode!r}; use 'packed' or 'stream'")
  if not rows:
    raise ValueError(f'no window of length {length} could be made from {len(token_lists)} lines')
  targets = np.zeros((len(rows), length), np.int32)
  segments = np.zeros_like(targets)
  positions = np.zeros_like(targets)
  for r, examples in enumerate(rows):
    start = 0
    for s, ex in enumerate(examples, 1):
      n = len(ex)
      targets[r, start:start + n] = ex
      segments[r, start:start + n] = s
      positions[r, start:start + n] = np.arange(n)
      start += n
  # Inputs are targets shifted right inside each segment, 0 at a segment start (as seqio's converter).
  inputs = np.zeros_like(targets)
  inputs[:, 1:] = targets[:, :-1]
  inputs[positions == 0] = 0
  return {'decoder_target_tokens': targets, 'decoder_input_tokens': inputs,
          'decoder_segment_ids': segments, 'decoder_positions': positions,
          'decoder_loss_weights': (segments > 0).astype(np.int32)}


def _pack(token_lists, length, eos_id, max_windows):
  rows, row, used = [], [], 0
  for toks in token_lists:
    ex = list(toks[:length - 1]) + [eos_id]  # seqio's append_eos_after_trim
    if len(ex) < 2:
      continue
    if used + len(ex) > length:
      rows.append(row)
      row, used = [], 0
      if max_windows and len(rows) >= max_windows:
        return rows
    row.append(ex)
    used += len(ex)
  if row and not (max_windows and len(rows) >= max_windows):
    rows.append(row)
  return rows


def _stream(token_lists, length, eos_id, max_windows):
  stream = []
  for toks in token_lists:
    stream.extend(list(toks) + [eos_id])
  n = len(stream) // length
  if max_windows:
    n = min(n, max_windows)
  return [[stream[i * length:(i + 1) * length]] for i in range(n)]


def prefix_lm_split(windows: dict) -> dict:
  """Encoder-decoder batch from decoder windows, as tasks.lm.prefix_lm_task trains: the first half of
  each window is the encoder input, the second half the target (scored where it is not pad).

  The window is read as continuous text (packed windows hold consecutive lines joined by EOS), so an
  example may start in one half and end in the other, as in a prefix-LM split of a stream.
  """
  tokens = np.asarray(windows['decoder_target_tokens'])
  half = tokens.shape[1] // 2
  target = tokens[:, half:]
  dec_in = np.zeros_like(target)
  dec_in[:, 1:] = target[:, :-1]  # shifted right, 0 first: what seqio's EncDecFeatureConverter feeds
  return {'encoder_input_tokens': tokens[:, :half], 'decoder_input_tokens': dec_in,
          'decoder_target_tokens': target,
          'decoder_loss_weights': (target != 0).astype(np.int32)}


def in_language(vocab, batch: dict, language: int) -> dict:
  """The same batch with its token arrays mapped to cloned language `language`."""
  out = dict(batch)
  for k in ('decoder_target_tokens', 'decoder_input_tokens', 'encoder_input_tokens'):
    if k in out:
      out[k] = to_language(vocab, out[k], language)
  return out


def sentence_batch(token_lists: Sequence[Sequence[int]], family: str = 'decoder',
                   pad_to: int = 16, max_width: Optional[int] = None) -> tuple[dict, np.ndarray]:
  """One unpacked sentence a row, for sentence embeddings (MEXA).

  Decoder: [0, t1..tn] -- the 0 plays the role of a BOS, as the training inputs start with 0 -- so
  position i has read tokens up to t_i, and the row's length is n + 1. Encoder-decoder: [t1..tn, eos]
  into the encoder, as seqio's `add_eos` features (and the exported tokenizer) give it. Rows are
  right-padded with 0 to a multiple of `pad_to` (fewer distinct shapes to compile);
  returns (batch, lengths).
  """
  if family == 'decoder':
    rows = [[0] + list(t) for t in token_lists]
  else:
    rows = [list(t) + [EOS_ID] for t in token_lists]
  lengths = np.array([len(r) for r in rows], np.int32)
  width = int(-(-lengths.max() // pad_to) * pad_to)
  if max_width:
    width = max(min(width, max_width), int(lengths.max()))
  tokens = np.zeros((len(rows), width), np.int32)
  for i, r in enumerate(rows):
    tokens[i, :len(r)] = r
  if family == 'decoder':
    real = (np.arange(width)[None] < lengths[:, None]).astype(np.int32)
    return {'decoder_input_tokens': tokens, 'decoder_segment_ids': real}, lengths
  return {'encoder_input_tokens': tokens,
          'decoder_input_tokens': np.zeros((len(rows), 1), np.int32)}, lengths
