"""Greedy decoding and beam search for both model families, jit-compiled, on a params tree + config.

    tokens = greedy_decode(params, config, inputs, max_new_tokens=32)
    tokens, scores = beam_search(params, config, inputs, max_new_tokens=32, beam_size=4, alpha=0.6)

`inputs` is an int32 [batch, length] array, right-padded with 0 (pad):
  * decoder-only (`DecoderConfig`): the prompts; generation continues each prompt after its last
    non-pad token (no EOS is added to prompts). A prompt may start with id 0, as every training input
    does (targets shifted right) and as the exported HF tokenizer encodes: `[0, t1, ..., tn]`.
  * encoder-decoder (`EncDecConfig`): the encoder inputs, as the task feeds them (ending with EOS); the
    decoder starts from id 0, as seqio's EncDecFeatureConverter shifts targets.
Both return the *new* tokens only: int32 [batch, max_new_tokens], EOS (id 1) included, 0 after it.
`beam_search` also returns each row's score (sum of log-probabilities, divided by the T5X/GNMT length
penalty ((5 + len) / 6) ** alpha).

Implementation: a key/value cache (the models' decode='prefill' | 'step' path, layers.Attention). One
prefill call runs the model on a fixed-size buffer (prompt + room for the new tokens) and stores every
layer's keys and values; each step then runs one token per row at that row's own position, inside
`jax.lax.while_loop`, attending to the cached positions up to it. Buffer slots past a row's prompt hold
pad keys until the step that writes them, and the mask never reaches them before that. The encoder runs
once and its cross-attention keys and values are cached at prefill. Beam search runs the encoder and
the prefill once per input row, repeats the result for its beams, and reorders the cache rows with the
beams. Loops stop early when every row has emitted EOS.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from t5x_like.models import build_model

EOS_ID = 1
PAD_ID = 0
NEG_INF = -1e9


def greedy_decode(params, config, inputs, *, max_new_tokens: int, eos_id: int = EOS_ID) -> jax.Array:
  """Greedy (argmax) continuation: int32 [batch, max_new_tokens], 0 after each row's EOS."""
  inputs = jnp.asarray(inputs, jnp.int32)
  return _greedy(params, inputs, config=config, max_new_tokens=max_new_tokens, eos_id=eos_id)


def beam_search(params, config, inputs, *, max_new_tokens: int, beam_size: int = 4, alpha: float = 0.6,
                eos_id: int = EOS_ID, return_all_beams: bool = False):
  """Beam search. Returns (tokens [batch, max_new_tokens], scores [batch]) for the best beam, or with
  `return_all_beams` (tokens [batch, beam, max_new_tokens], scores [batch, beam]) sorted best first.

  Finished beams stay in the beam with their score frozen (they extend only with pad at no cost); the
  final ranking applies the length penalty. beam_size=1 is greedy decoding.
  """
  inputs = jnp.asarray(inputs, jnp.int32)
  tokens, scores = _beam(params, inputs, config=config, max_new_tokens=max_new_tokens,
                         beam_size=beam_size, alpha=float(alpha), eos_id=eos_id)
  if return_all_beams:
    return tokens, scores
  return tokens[:, 0], scores[:, 0]


# --- model application --------------------------------------------------------------------------------

def _cached_model(params, config, inputs, length: int, repeat: int = 1):
  """(prefill, step) for the rows of `inputs`, each repeated `repeat` times (the beams), and a decoder
  buffer of `length` tokens. The encoder (if any) runs here, once per input row:
  prefill(buffer [rows, L], pos [rows]) -> (logits at pos [rows * repeat, vocab], cache of rows * repeat);
  step(cache, tokens [rows * repeat], positions [rows * repeat]) -> (next-token logits, cache).
  Prefill also runs once per input row; its result is repeated, since the beams start identical."""
  model = build_model(config)
  widen = lambda tree: jax.tree.map(lambda x: jnp.repeat(x, repeat, axis=0), tree)
  at = lambda logits, pos: jnp.take_along_axis(logits, pos[:, None, None], axis=1)[:, 0]
  if config.family == 'decoder':
    def prefill(buffer, pos):
      logits, v = model.apply({'params': params}, {'decoder_input_tokens': buffer},
                              deterministic=True, decode='prefill', mutable=['cache'])
      return widen((at(logits, pos), v['cache']))

    def step(cache, tok, pos):
      batch = {'decoder_input_tokens': tok[:, None], 'decoder_positions': pos[:, None]}
      logits, v = model.apply({'params': params, 'cache': cache}, batch, deterministic=True,
                              decode='step', mutable=['cache'])
      return logits[:, 0], v['cache']
    return prefill, step

  encoded = model.apply({'params': params}, {'encoder_input_tokens': inputs}, deterministic=True,
                        method=model.encode)
  wide_inputs = widen(inputs)

  def prefill(buffer, pos):
    batch = {'encoder_input_tokens': inputs, 'decoder_input_tokens': buffer}
    logits, v = model.apply({'params': params}, batch, encoded, deterministic=True, decode='prefill',
                            mutable=['cache'], method=model.decode)
    return widen((at(logits, pos), v['cache']))

  def step(cache, tok, pos):
    batch = {'encoder_input_tokens': wide_inputs, 'decoder_input_tokens': tok[:, None],
             'decoder_positions': pos[:, None]}
    logits, v = model.apply({'params': params, 'cache': cache}, batch, None, deterministic=True,
                            decode='step', decode_length=length, mutable=['cache'],
                            method=model.decode)
    return logits[:, 0], v['cache']
  return prefill, step


def _prompt_lengths(inputs):
  """Up to each row's last non-pad token: a leading 0 (the training-time start token) is counted."""
  pos = jnp.arange(1, inputs.shape[1] + 1, dtype=jnp.int32)
  return jnp.max(jnp.where(inputs != PAD_ID, pos[None], 0), axis=1).astype(jnp.int32)


def _start(config, inputs, max_new_tokens: int):
  """(buffer, first position to predict from) for each row."""
  bsz = inputs.shape[0]
  if config.family == 'decoder':
    lengths = _prompt_lengths(inputs)
    buffer = jnp.concatenate([inputs, jnp.zeros((bsz, max_new_tokens), jnp.int32)], axis=1)
    if config.position_embedding == 'learned' and buffer.shape[1] > config.max_length:
      raise ValueError(f'prompt length + max_new_tokens = {buffer.shape[1]} > DecoderConfig.max_length='
                       f'{config.max_length}')
    return buffer, jnp.maximum(lengths - 1, 0)
  # Decoder input = [0, y_1, ..., y_{n-1}]: position t predicts y_{t+1}.
  return jnp.zeros((bsz, max_new_tokens), jnp.int32), jnp.zeros((bsz,), jnp.int32)


# --- greedy --------------------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=('config', 'max_new_tokens', 'eos_id'))
def _greedy(params, inputs, *, config, max_new_tokens: int, eos_id: int):
  bsz = inputs.shape[0]
  buffer, pos = _start(config, inputs, max_new_tokens)
  prefill, step = _cached_model(params, config, inputs, buffer.shape[1])
  last = buffer.shape[1] - 1
  logits, cache = prefill(buffer, pos)
  out = jnp.zeros((bsz, max_new_tokens), jnp.int32)
  done = jnp.zeros((bsz,), bool)

  def cond(carry):
    t, done = carry[0], carry[-1]
    return (t < max_new_tokens) & ~jnp.all(done)

  def body(carry):
    t, logits, cache, pos, out, done = carry
    tok = jnp.where(done, PAD_ID, jnp.argmax(logits, axis=-1).astype(jnp.int32))
    out = out.at[:, t].set(tok)
    # The last token of an encoder-decoder buffer has no slot; its logits are never read, so the
    # clamped write at the last slot is harmless.
    logits, cache = step(cache, tok, jnp.minimum(pos + 1, last))
    return t + 1, logits, cache, pos + 1, out, done | (tok == eos_id)

  carry = jax.lax.while_loop(cond, body, (0, logits, cache, pos, out, done))
  return carry[4]


# --- beam search ---------------------------------------------------------------------------------------

def length_penalty(length, alpha: float):
  """T5X / GNMT brevity penalty ((5 + length) / 6) ** alpha."""
  return ((5.0 + length.astype(jnp.float32)) / 6.0) ** alpha


@functools.partial(jax.jit, static_argnames=('config', 'max_new_tokens', 'beam_size', 'alpha', 'eos_id'))
def _beam(params, inputs, *, config, max_new_tokens: int, beam_size: int, alpha: float, eos_id: int):
  bsz, k = inputs.shape[0], beam_size
  n = bsz * k
  buffer, pos = _start(config, inputs, max_new_tokens)
  prefill, step = _cached_model(params, config, inputs, buffer.shape[1], repeat=k)
  last = buffer.shape[1] - 1
  logits, cache = prefill(buffer, pos)
  pos = jnp.repeat(pos, k, axis=0)
  out = jnp.zeros((n, max_new_tokens), jnp.int32)
  # Only the first beam is live at the start, so the first step does not pick k copies of one token.
  scores = jnp.tile(jnp.asarray([0.0] + [NEG_INF] * (k - 1), jnp.float32), bsz)
  done = jnp.zeros((n,), bool)
  lengths = jnp.zeros((n,), jnp.int32)

  def cond(carry):
    return (carry[0] < max_new_tokens) & ~jnp.all(carry[-1])

  def body(carry):
    t, logits, cache, pos, out, scores, lengths, done = carry
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [n, V]
    vocab = logp.shape[-1]
    # A finished beam continues only with pad, at no cost: its score is frozen.
    frozen = jnp.full((vocab,), NEG_INF).at[PAD_ID].set(0.0)
    logp = jnp.where(done[:, None], frozen[None], logp)
    cand = (scores[:, None] + logp).reshape(bsz, k * vocab)
    top_scores, top_idx = jax.lax.top_k(cand, k)  # [bsz, k]
    src = (top_idx // vocab + jnp.arange(bsz)[:, None] * k).reshape(n)
    tok = (top_idx % vocab).reshape(n).astype(jnp.int32)
    cache = jax.tree.map(lambda c: c[src], cache)  # every cache leaf has the rows on axis 0
    pos, out, lengths, done = pos[src], out[src], lengths[src], done[src]
    tok = jnp.where(done, PAD_ID, tok)
    out = out.at[:, t].set(tok)
    lengths = lengths + (~done).astype(jnp.int32)
    logits, cache = step(cache, tok, jnp.minimum(pos + 1, last))
    return (t + 1, logits, cache, pos + 1, out, top_scores.reshape(n), lengths,
            done | (tok == eos_id))

  carry = (0, logits, cache, pos, out, scores, lengths, done)
  _, _, _, _, out, scores, lengths, _ = jax.lax.while_loop(cond, body, carry)
  final = (scores / length_penalty(lengths, alpha)).reshape(bsz, k)
  order = jnp.argsort(-final, axis=1)
  out = jnp.take_along_axis(out.reshape(bsz, k, -1), order[:, :, None], axis=1)
  return out, jnp.take_along_axis(final, order, axis=1)


def sequence_log_prob(params, config, inputs, continuation) -> np.ndarray:
  """Sum of log-probabilities of `continuation` ([batch, n], 0 after EOS) given `inputs`: for checking
  decoders (a beam's unpenalised score must equal this)."""
  return np.asarray(_sequence_log_prob(params, jnp.asarray(inputs, jnp.int32),
                                       jnp.asarray(continuation, jnp.int32), config=config))


@functools.partial(jax.jit, static_argnames=('config',))
def _sequence_log_prob(params, inputs, cont, *, config):
  model = build_model(config)
  valid = jnp.cumsum(jnp.pad(cont == EOS_ID, ((0, 0), (1, 0)))[:, :-1], axis=1) == 0
  if config.family == 'decoder':
    lengths = _prompt_lengths(inputs)
    seq = jnp.concatenate([inputs, jnp.zeros_like(cont)], axis=1)
    idx = lengths[:, None] + jnp.arange(cont.shape[1])[None]
    seq = seq.at[jnp.arange(seq.shape[0])[:, None], idx].set(cont)
    logits = model.apply({'params': params}, {'decoder_input_tokens': seq}, deterministic=True)
    # Position i predicts token i + 1.
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), (idx - 1)[:, :, None], axis=1)
  else:
    dec_in = jnp.pad(cont, ((0, 0), (1, 0)))[:, :-1]
    logp = jax.nn.log_softmax(model.apply(
        {'params': params}, {'encoder_input_tokens': inputs, 'decoder_input_tokens': dec_in}), axis=-1)
  tok_logp = jnp.take_along_axis(logp, cont[:, :, None], axis=-1)[:, :, 0]
  return jnp.sum(jnp.where(valid, tok_logp, 0.0), axis=1)
