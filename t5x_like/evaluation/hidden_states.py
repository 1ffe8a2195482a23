"""Every block's output for a batch, read from the 'intermediates' the models sow.

The models sow 'embedded' (embedding output, positions added) and, per block, 'hidden' (the block's
output, before the final norm); `forward(..., final_norm=True)` gives the last one after the final
norm instead, as transformers' `output_hidden_states` does. Scanned layers stack theirs on axis 0
under 'layers'; unrolled ones live under 'layers_{i}'. `stack_hidden` turns either layout into one
[num_layers + 1, batch, length, embed] array, embedding output first, so every metric indexes layers
the same way.
"""
from __future__ import annotations

import functools
import re
from typing import Optional

import jax
import jax.numpy as jnp


def _first(x):
  # sow stores a tuple (one entry per call); each block is called once.
  return x[0] if isinstance(x, (tuple, list)) else x


def stack_hidden(intermediates: dict) -> jax.Array:
  """[L + 1, B, T, D] from one stack's intermediates ({'embedded', 'layers' | 'layers_i'})."""
  out = [_first(intermediates['embedded'])]
  if 'layers' in intermediates:
    stacked = _first(intermediates['layers']['hidden'])  # [L, B, T, D]
    out.extend(stacked[i] for i in range(stacked.shape[0]))
  else:
    names = sorted((k for k in intermediates if re.fullmatch(r'layers_\d+', k)),
                   key=lambda k: int(k.split('_')[1]))
    if not names:
      raise KeyError(f'no block outputs among intermediates {sorted(intermediates)}')
    out.extend(_first(intermediates[k]['hidden']) for k in names)
  return jnp.stack([h.astype(jnp.float32) for h in out])


def stack_of(intermediates: dict, family: str, stack: Optional[str] = None) -> dict:
  """The intermediates of one stack: the decoder's for decoder-only models; for encoder-decoders the
  encoder's by default (sentence representations come from the encoder), or `stack='decoder'`."""
  if family == 'decoder':
    return intermediates
  stack = stack or 'encoder'
  if stack not in intermediates:
    raise KeyError(f'no {stack!r} stack among intermediates {sorted(intermediates)}')
  return intermediates[stack]


def _is_final_norm(module, method: str) -> bool:
  return module.name == 'final_norm' and method == '__call__'


def forward(model, params, batch: dict, *, stack: Optional[str] = None, final_norm: bool = False):
  """(logits, hidden [L + 1, B, T, D]) of one deterministic forward pass.

  `final_norm=False`: the last entry is the last block's output (the alignment metrics' convention).
  `final_norm=True`: it is that output after the stack's final norm, as transformers' `hidden_states`
  (Llama and T5 alike) give it, and as cisnlp/Mexa scores it; the stack's final norm module is
  captured (`capture_intermediates`), so the model code stays as it is.

  Decoder windows (batches.pack_windows) given to an encoder-decoder are read by its encoder: the
  window's tokens are the encoder input, position for position (`encoder_view`)."""
  if model.config.family == 'encdec' and 'encoder_input_tokens' not in batch:
    batch = encoder_view(batch)
  logits, state = model.apply({'params': params}, batch, deterministic=True,
                              mutable=['intermediates'],
                              capture_intermediates=_is_final_norm if final_norm else False)
  inter = stack_of(state['intermediates'], model.config.family, stack)
  hidden = stack_hidden(inter)
  if final_norm:
    hidden = hidden.at[-1].set(_first(inter['final_norm']['__call__']).astype(jnp.float32))
  return logits, hidden


def encoder_view(windows: dict) -> dict:
  """An encoder-decoder batch whose encoder reads the windows' text (segments kept, so packed examples
  do not attend to each other); the decoder gets one start token, and its output is not used."""
  tokens = windows['decoder_target_tokens']
  rows = tokens.shape[0]
  return {'encoder_input_tokens': tokens, 'encoder_segment_ids': windows['decoder_segment_ids'],
          'decoder_input_tokens': jnp.zeros((rows, 1), jnp.int32),
          'decoder_segment_ids': jnp.ones((rows, 1), jnp.int32)}


def layer_names(num_hidden: int) -> list[str]:
  return ['embedding'] + [f'block_{i}' for i in range(num_hidden - 1)]


_JIT_CACHE: dict = {}


def jitted(fn, model, **static):
  """jax.jit(partial(fn, model=model, **static)), one per (fn, model config, static args).

  The evaluator calls the same metric for every language, checkpoint and control; without the cache
  each call would trace and compile again (seconds each on a CPU, more than the metric itself).
  """
  key = (fn, type(model), model.config, tuple(sorted(static.items())))
  if key not in _JIT_CACHE:
    _JIT_CACHE[key] = jax.jit(functools.partial(fn, model=model, **static))
  return _JIT_CACHE[key]
