"""MEXA (cisnlp/Mexa): how often a sentence's translation is its strict nearest neighbour, per layer.

For n parallel sentences, pivot (English) embeddings e_i and target-language embeddings f_j per layer:
S_ij = cos(e_i, f_j); MEXA = (1/n) sum_i 1[S_ii > max_{j!=i} S_ij and S_ii > max_{j!=i} S_ji] -- the
partner must beat every other sentence in its row AND in its column, strictly, so ties never count.

What is embedded is what cisnlp/Mexa's `embed_extractor.py` computes on the exported model: transformers'
`hidden_states` of each sentence alone -- the embedding output, then every block, the LAST ONE AFTER THE
FINAL NORM (L + 1 entries) -- for the ids the exported tokenizer gives: `[0, t1..tn]` for decoders (id 0
starts every training input), `[t1..tn, eos]` into the encoder of an encoder-decoder. (The alignment
metrics keep their own convention, every block before the final norm: see docs/ABLATION.md.)
- 'weighted' (MEXA's default): e = sum_t t h_t / sum_t t, t = 1..T over the row's own tokens, the
  leading 0 included (later tokens, which have read more of the sentence, weigh more);
- 'lasttoken': e = h_T.
Sentences are cut only at the model's own limit (a decoder's `max_length`, leading 0 included;
encoder-decoders have none); how many were cut is returned. Chance level for n sentences is about 1/n.
"""
from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from t5x_like.evaluation import batches as batches_lib
from t5x_like.evaluation import hidden_states

POOLINGS = ('weighted', 'lasttoken')


def mexa_score(e_pivot: np.ndarray, e_target: np.ndarray) -> float:
  """MEXA of two [n, D] embedding sets whose row i are translations of each other."""
  a = np.asarray(e_pivot, np.float64)
  b = np.asarray(e_target, np.float64)
  if a.shape != b.shape or a.ndim != 2:
    raise ValueError(f'need two [n, D] arrays of one shape, got {a.shape} and {b.shape}')
  a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
  b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
  s = a @ b.T
  n = s.shape[0]
  diag = np.diag(s).copy()
  off = s.copy()
  np.fill_diagonal(off, -np.inf)
  row_best, col_best = off.max(axis=1), off.max(axis=0)
  return float(np.mean((diag > row_best) & (diag > col_best))) if n > 1 else 1.0


def pool(hidden: np.ndarray, lengths: np.ndarray, mode: str = 'weighted') -> np.ndarray:
  """[L1, B, T, D] hidden states + true lengths [B] -> [L1, B, D] sentence embeddings."""
  hidden = np.asarray(hidden, np.float64)
  t = np.arange(1, hidden.shape[2] + 1, dtype=np.float64)
  real = t[None, :] <= np.asarray(lengths)[:, None]             # [B, T]
  if mode == 'weighted':
    w = np.where(real, t[None, :], 0.0)
    return np.einsum('lbtd,bt->lbd', hidden, w) / w.sum(1)[None, :, None]
  if mode == 'lasttoken':
    return hidden[:, np.arange(hidden.shape[1]), np.asarray(lengths) - 1]
  raise ValueError(f'MEXA pooling {mode!r}; use one of {POOLINGS}')


def _hidden(params, batch, *, model):
  return hidden_states.forward(model, params, batch, final_norm=True)[1]


def token_limit(cfg):
  """Sentence tokens a model takes (None: no limit): a decoder's positions, less the leading 0."""
  return cfg.max_length - 1 if cfg.family == 'decoder' else None


def sentence_embeddings(model, params, vocab, lines: Sequence[str], language: int = 0, *,
                        batch_size: int = 32) -> dict:
  """{'weighted': [L1, n, D], 'lasttoken': [L1, n, D], 'cut': sentences cut at the model's limit} for
  sentences written in cloned `language`."""
  cfg = model.config
  family = cfg.family
  limit = token_limit(cfg)
  fn = hidden_states.jitted(_hidden, model)
  ids = [batches_lib.encode_base(vocab, l) for l in lines]
  cut = sum(len(x) > limit for x in ids) if limit else 0
  ids = [x[:limit] for x in ids] if limit else ids
  order = np.argsort([len(x) for x in ids], kind='stable')  # similar lengths together: less padding
  out = {m: [None] * len(ids) for m in POOLINGS}
  for start in range(0, len(ids), batch_size):
    idx = order[start:start + batch_size]
    batch, lengths = batches_lib.sentence_batch([ids[i] for i in idx], family,
                                                max_width=limit + 1 if limit else None)
    batch = batches_lib.in_language(vocab, batch, language)
    short = batch_size - len(idx)
    if short:  # constant batch size: one compile per padded width
      batch = {k: np.concatenate([v, np.zeros((short,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    h = np.asarray(jax.device_get(fn(params, batch)))[:, :len(idx)]
    for m in POOLINGS:
      pooled = pool(h, lengths, m)
      for j, i in enumerate(idx):
        out[m][i] = pooled[:, j]
  return {**{m: np.stack(v, axis=1) for m, v in out.items()}, 'cut': int(cut)}


def mexa_by_layer(pivot: dict, target: dict) -> dict:
  """Scores per pooling: {'by_layer': [...], 'mean': ..., 'max': ...}."""
  res = {}
  for m in POOLINGS:
    scores = [mexa_score(pivot[m][l], target[m][l]) for l in range(pivot[m].shape[0])]
    res[m] = {'by_layer': scores, 'mean': float(np.mean(scores)), 'max': float(np.max(scores))}
  return res
