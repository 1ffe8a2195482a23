"""Per-language perplexity on fixed windows, optionally scored only on the last n positions.

The cloned-language paper scores the last 128 tokens of each 512-token window, so every scored token
has at least 384 tokens of context; `last_n` does the same (positions length-n .. length-1 of each
window; padding is never scored).

Encoder-decoder models read the first half of each window and are scored on the second half
(`batches.prefix_lm_split`, the prefix-LM objective), so their numbers are perplexities of continuations
given a prefix and are comparable across languages and runs of that model family, not with decoder-only
perplexities of whole windows. `last_n` then counts from the end of the target half.
"""
from __future__ import annotations

from typing import Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np

from t5x_like import losses
from t5x_like.evaluation import batches
from t5x_like.evaluation.hidden_states import jitted


def chunks(batch: dict, batch_size: int) -> Iterator[dict]:
  """Fixed-shape slices of a window set; the last one is padded with all-zero (unscored) rows."""
  n = next(iter(batch.values())).shape[0]
  for start in range(0, n, batch_size):
    part = {k: v[start:start + batch_size] for k, v in batch.items()}
    short = batch_size - next(iter(part.values())).shape[0]
    if short:
      part = {k: np.concatenate([v, np.zeros((short,) + v.shape[1:], v.dtype)]) for k, v in
              part.items()}
    yield part


def _sums(params, batch, *, model, last_n: int):
  logits = model.apply({'params': params}, batch, deterministic=True)
  nll, _ = losses.token_losses(logits, batch['decoder_target_tokens'], z_loss=0.0,
                               label_smoothing=0.0)
  w = batch['decoder_loss_weights'].astype(jnp.float32)
  length = w.shape[1]
  tail = (jnp.arange(length) >= length - last_n).astype(jnp.float32)[None] if last_n else w
  return {'nll': jnp.sum(nll * w), 'tokens': jnp.sum(w),
          'nll_last': jnp.sum(nll * w * tail), 'tokens_last': jnp.sum(w * tail)}


def perplexity(model, params, windows: dict, *, batch_size: int = 16,
               last_n: Optional[int] = None) -> dict:
  """{'perplexity', 'loss', 'num_tokens'} over all windows (+ 'last_n' ones when asked for)."""
  if model.config.family == 'encdec':
    windows = batches.prefix_lm_split(windows)
    if last_n and last_n > windows['decoder_target_tokens'].shape[1]:
      raise ValueError(f'last_n={last_n} is longer than the scored half of the windows '
                       f'({windows["decoder_target_tokens"].shape[1]} tokens)')
  fn = jitted(_sums, model, last_n=int(last_n or 0))
  total = None
  for part in chunks(windows, batch_size):
    s = jax.device_get(fn(params, part))
    total = s if total is None else {k: total[k] + s[k] for k in s}
  out = _summary(total['nll'], total['tokens'])
  if last_n:
    out['last_n'] = dict(_summary(total['nll_last'], total['tokens_last']), n=int(last_n))
  return out


def _summary(nll_sum, tokens) -> dict:
  tokens = float(tokens)
  if tokens == 0:
    raise ValueError('no token was scored (windows empty, or last_n larger than every window?)')
  loss = float(nll_sum) / tokens
  return {'perplexity': float(np.exp(min(loss, 50.0))), 'loss': loss, 'num_tokens': int(tokens)}
