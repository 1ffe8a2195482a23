"""How aligned a language and its clone are: hidden states and gradients of parallel text.

Hidden-state alignment (Schäfer et al. 2024): the cosine between the hidden state of a token in language
0 and the hidden state of the same token, at the same position of the same text, in cloned language k,
per block output (before the final norm; the embedding output is layer 0), averaged over positions and
sequences. The raw number misleads on its own -- anisotropic hidden states (a large shared mean
direction, shared position embeddings) give high cosines to ANY two vectors -- so every number comes with:
- `centred`: both languages' hidden states minus their own mean over all scored positions (per layer);
- `*_mismatched`: the control, language 0 of sequence i against the clone of sequence i+1, scored on the
  same positions. Alignment is the matched-minus-mismatched gap of the centred cosine (`centred_gap`),
  with its standard error clustered by token type (see `summarize_pair_sums`).
Both matched and control pairs are scored only where the two sequences of the control pair are both real
tokens at the same position id, so they see identical positions (with packed windows, positions restart
per example; with stream windows every position counts).

Gradient alignment: cosine between the gradients of the mean token loss of a batch in language 0 and of
the same batch in language k, overall, without the vocabulary-indexed matrices (cloned rows of the
embedding / output layer get disjoint gradients by construction), and per block; with the control batch
j against batch j+1.
"""
from __future__ import annotations

import functools
import re
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from t5x_like import losses
from t5x_like.evaluation import batches as batches_lib
from t5x_like.evaluation import hidden_states
from t5x_like.evaluation.perplexity import chunks


def _cos(a, b):
  num = jnp.sum(a * b, axis=-1)
  den = jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1)
  return num / jnp.maximum(den, 1e-12)


def _hidden(params, batch, *, model):
  return hidden_states.forward(model, params, batch)[1]  # [L1, B, T, D]


def _mean_sums(params, batch, *, model):
  h = _hidden(params, batch, model=model)
  w = (batch['decoder_loss_weights'] > 0).astype(jnp.float32)
  return jnp.einsum('lbtd,bt->ld', h, w), jnp.sum(w)


def _pair_sums(params, b0, b1, b1_next, mean0, mean1, mask, mask_next, *, model):
  """Per-sequence sums of cosines [4, L1, B] (raw, raw_mm, centred, centred_mm), counts [2, B], and
  the centred gap summed per current token type [L1, V] with its counts [V] (for clustered errors)."""
  h0 = _hidden(params, b0, model=model)
  h1 = _hidden(params, b1, model=model)
  h1n = _hidden(params, b1_next, model=model)
  c0, c1, c1n = h0 - mean0[:, None, None], h1 - mean1[:, None, None], h1n - mean1[:, None, None]
  m, mn = mask[None], mask_next[None]
  cc, ccn = _cos(c0, c1), _cos(c0, c1n)
  sums = jnp.stack([jnp.sum(_cos(h0, h1) * m, -1), jnp.sum(_cos(h0, h1n) * mn, -1),
                    jnp.sum(cc * m, -1), jnp.sum(ccn * mn, -1)])
  vocab = model.config.vocab_size
  ids = b0['decoder_input_tokens'].reshape(-1)
  gap = (cc * m - ccn * mn).reshape(cc.shape[0], -1)                     # [L1, B*T]
  by_type = jax.vmap(lambda g: jax.ops.segment_sum(g, ids, num_segments=vocab))(gap)
  type_counts = jax.ops.segment_sum(mask.reshape(-1), ids, num_segments=vocab)
  return sums, jnp.stack([jnp.sum(mask, -1), jnp.sum(mask_next, -1)]), by_type, type_counts


def hidden_alignment(model, params, vocab, windows: dict, language: int = 1, *,
                     batch_size: int = 16) -> dict:
  """Layer-wise cosine between language 0 and `language` on the same windows (see module doc)."""
  n = windows['decoder_input_tokens'].shape[0]
  if n < 2:
    raise ValueError('hidden-state alignment needs at least 2 windows (for the mismatched control)')
  w0 = windows
  w1 = batches_lib.in_language(vocab, windows, language)
  # The control: row i of language 0 against row i+1 of the clone (scored on the same positions).
  w1_next = {k: np.roll(v, -1, axis=0) for k, v in w1.items()}
  mask_all = _np_pair_mask(w0, w0)
  mask_next_all = _np_pair_mask(w0, w1_next)
  # The scored positions of the matched pairs are those of the control, so both see the same positions.
  mask_all = mask_all * mask_next_all

  means = []
  fn_mean = hidden_states.jitted(_mean_sums, model)
  for w in (w0, w1):
    total, count = None, 0.0
    for part in chunks(w, batch_size):
      s, c = jax.device_get(fn_mean(params, part))
      total = s if total is None else total + s
      count += float(c)
    means.append(total / max(count, 1.0))

  fn = hidden_states.jitted(_pair_sums, model)
  per_seq, counts = [], []
  by_type, type_counts = 0.0, 0.0
  extra = {'mask': mask_all, 'mask_next': mask_next_all}
  for p0, p1, p1n, pm in zip(chunks(w0, batch_size), chunks(w1, batch_size),
                             chunks(w1_next, batch_size), chunks(extra, batch_size)):
    s, c, bt, tc = jax.device_get(fn(params, p0, p1, p1n, means[0], means[1], pm['mask'],
                                     pm['mask_next']))
    per_seq.append(np.asarray(s, np.float64))
    counts.append(np.asarray(c, np.float64))
    by_type = by_type + np.asarray(bt, np.float64)
    type_counts = type_counts + np.asarray(tc, np.float64)
  sums = np.concatenate(per_seq, axis=-1)[..., :n]   # [4, L1, N]
  cnt = np.concatenate(counts, axis=-1)[..., :n]     # [2, N]
  return summarize_pair_sums(sums, cnt, by_type, type_counts)


def _np_pair_mask(a: dict, b: dict) -> np.ndarray:
  wa, wb = a['decoder_loss_weights'] > 0, b['decoder_loss_weights'] > 0
  same = a['decoder_positions'] == b['decoder_positions']
  return (wa & wb & same).astype(np.float32)


def summarize_pair_sums(sums: np.ndarray, counts: np.ndarray, by_type: Optional[np.ndarray] = None,
                        type_counts: Optional[np.ndarray] = None) -> dict:
  """Position-weighted means per layer, and the centred gap's standard errors.

  `centred_gap_se` is clustered by token type (CR0: sum_k (S_k - n_k * gap)^2 / N^2 over the types k
  of the current token): the same token pairs recur in every sequence, so their cosines are not
  independent across sequences, and an error over sequences alone is several times too small (seen:
  a monolingual model, which never saw the clone, gave gaps of -0.04 with a per-sequence error of
  0.003). `centred_gap_se_seq` is that per-sequence error, kept for comparison.
  """
  keys = ('raw', 'raw_mismatched', 'centred', 'centred_mismatched')
  tot = counts.sum(-1)
  if tot[0] == 0:
    raise ValueError('no position could be scored for alignment (windows too short or empty?)')
  out = {k: (sums[i].sum(-1) / tot[0 if i % 2 == 0 else 1]).tolist() for i, k in enumerate(keys)}
  ok = counts[0] > 0
  gap_seq = (sums[2][:, ok] - sums[3][:, ok]) / counts[0][ok]   # [L1, N']
  out['centred_gap'] = (np.array(out['centred']) - np.array(out['centred_mismatched'])).tolist()
  out['centred_gap_se_seq'] = (gap_seq.std(-1, ddof=1) / np.sqrt(max(ok.sum(), 1))).tolist() \
      if ok.sum() > 1 else [float('nan')] * sums.shape[1]
  if by_type is not None:
    gap = np.array(out['centred_gap'])[:, None]
    var = np.sum((by_type - type_counts[None] * gap) ** 2, axis=1) / tot[0] ** 2
    out['centred_gap_se'] = np.sqrt(var).tolist()
    w = type_counts / type_counts.sum()
    out['effective_token_types'] = float(1.0 / np.sum(w ** 2))
  else:
    out['centred_gap_se'] = out['centred_gap_se_seq']
  out['layers'] = hidden_states.layer_names(sums.shape[1])
  out['num_sequences'] = int(ok.sum())
  out['num_positions'] = int(tot[0])
  return out


def cosine_by_layer(h0: np.ndarray, h1: np.ndarray, weights: Optional[np.ndarray] = None,
                    centre: bool = False) -> np.ndarray:
  """Mean cosine per layer of [L1, N, T, D] hidden states (array version, for tests and notebooks)."""
  h0, h1 = np.asarray(h0, np.float64), np.asarray(h1, np.float64)
  w = np.ones(h0.shape[1:3]) if weights is None else np.asarray(weights, np.float64)
  if centre:
    h0 = h0 - np.einsum('lntd,nt->ld', h0, w)[:, None, None] / w.sum()
    h1 = h1 - np.einsum('lntd,nt->ld', h1, w)[:, None, None] / w.sum()
  cos = np.sum(h0 * h1, -1) / np.maximum(np.linalg.norm(h0, axis=-1) * np.linalg.norm(h1, axis=-1),
                                         1e-12)
  return np.einsum('lnt,nt->l', cos, w) / w.sum()


# --- gradients --------------------------------------------------------------------------------------

VOCAB_PARAMS = ('token_embed', 'lm_head')


def _mean_loss(params, batch, *, model):
  logits = model.apply({'params': params}, batch, deterministic=True)
  nll, _ = losses.token_losses(logits, batch['decoder_target_tokens'], z_loss=0.0,
                               label_smoothing=0.0)
  w = batch['decoder_loss_weights'].astype(jnp.float32)
  return jnp.sum(nll * w) / jnp.maximum(jnp.sum(w), 1.0)


def _grad_mean_loss(params, batch, *, model):
  return jax.grad(functools.partial(_mean_loss, model=model))(params, batch)


def grad_groups(grads) -> dict[str, list[np.ndarray]]:
  """Gradient leaves grouped: 'all', 'non_vocab' (all but embedding/output matrices), 'block_i'."""
  groups: dict[str, list[np.ndarray]] = {'all': [], 'non_vocab': []}
  for path, leaf in jax.tree_util.tree_flatten_with_path(grads)[0]:
    name = jax.tree_util.keystr(path)
    leaf = np.asarray(leaf, np.float64)
    groups['all'].append(leaf.ravel())
    if any(v in name for v in VOCAB_PARAMS):
      continue
    groups['non_vocab'].append(leaf.ravel())
    stack = re.search(r"\['(\w*?)layers'\]", name)   # scanned: leading axis = layer
    unrolled = re.search(r"\['(\w*?)layers_(\d+)'\]", name)
    if unrolled:
      groups.setdefault(f'block_{unrolled.group(2)}', []).append(leaf.ravel())
    elif stack:
      for i in range(leaf.shape[0]):
        groups.setdefault(f'block_{i}', []).append(leaf[i].ravel())
  return groups


def grad_vectors(grads) -> dict[str, np.ndarray]:
  """One float64 vector per group of grad_groups (each gradient is grouped once, then compared twice)."""
  return {k: np.concatenate(v) for k, v in grad_groups(grads).items()}


def grad_cosines(a: dict, b: dict) -> dict[str, float]:
  """Cosine per group of two grad_vectors results."""
  out = {}
  for k in a:
    x, y = a[k], b[k]
    out[k] = float(x @ y / max(np.linalg.norm(x) * np.linalg.norm(y), 1e-30))
  return out


def gradient_alignment(model, params, vocab, windows: dict, language: int = 1, *,
                       batch_size: int = 16, num_batches: int = 4) -> dict:
  """Mean over batches of the gradient cosine (language 0 vs `language`), and the j vs j+1 control."""
  if model.config.family != 'decoder':
    raise ValueError('gradient alignment is implemented for decoder-only models')
  n = windows['decoder_input_tokens'].shape[0]
  num_batches = min(num_batches, n // batch_size)
  if num_batches < 2:
    raise ValueError(f'gradient alignment needs 2 full batches of {batch_size} windows; '
                     f'there are {n} windows')
  grad_fn = hidden_states.jitted(_grad_mean_loss, model)
  w1 = batches_lib.in_language(vocab, windows, language)
  parts0 = list(chunks(windows, batch_size))[:num_batches]
  parts1 = list(chunks(w1, batch_size))[:num_batches]
  g0 = [grad_vectors(jax.device_get(grad_fn(params, p))) for p in parts0]
  matched, control = [], []
  for j, p1 in enumerate(parts1):
    g1 = grad_vectors(jax.device_get(grad_fn(params, p1)))
    matched.append(grad_cosines(g0[j], g1))
    control.append(grad_cosines(g0[j - 1], g1))   # language 0 of batch j-1 vs clone of batch j
  keys = list(matched[0])
  blocks = sorted((k for k in keys if k.startswith('block_')), key=lambda k: int(k.split('_')[1]))
  mean = lambda rows, k: float(np.mean([r[k] for r in rows]))
  return {
      'all': mean(matched, 'all'), 'all_mismatched': mean(control, 'all'),
      'non_vocab': mean(matched, 'non_vocab'),
      'non_vocab_mismatched': mean(control, 'non_vocab'),
      'by_block': [mean(matched, k) for k in blocks],
      'by_block_mismatched': [mean(control, k) for k in blocks],
      'num_batches': num_batches, 'batch_size': batch_size,
  }
