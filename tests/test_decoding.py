"""Greedy and beam search against naive references: a Python loop of full forwards, and exhaustive search."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_like import decoding
from t5x_like.models import DecoderConfig, EncDecConfig, build_model
from test_convert import init_params

CFGS = {
    'decoder': DecoderConfig(vocab_size=7, embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=1,
                             head_dim=8, mlp_dim=24, dtype='float32'),
    'encdec': EncDecConfig(vocab_size=7, embed_dim=16, num_encoder_layers=1, num_decoder_layers=1,
                           num_heads=2, head_dim=8, mlp_dim=24, dtype='float32'),
}


def naive_greedy(params, cfg, row, n):
  """One row, one full forward per token, in Python (fixed-size buffers, so one compile)."""
  model = build_model(cfg)
  apply = jax.jit(model.apply)
  out = []
  if cfg.family == 'decoder':
    seq = [t for t in row if t]
    for _ in range(n):
      buf = np.zeros((1, len(row) + n), np.int32)
      buf[0, :len(seq)] = seq
      logits = apply({'params': params}, {'decoder_input_tokens': jnp.asarray(buf)})
      seq.append(int(jnp.argmax(logits[0, len(seq) - 1])))
      out.append(seq[-1])
      if out[-1] == 1:
        break
  else:
    dec = [0]
    for _ in range(n):
      buf = np.zeros((1, n), np.int32)
      buf[0, :len(dec)] = dec
      logits = apply({'params': params}, {'encoder_input_tokens': jnp.asarray([row]),
                                          'decoder_input_tokens': jnp.asarray(buf)})
      dec.append(int(jnp.argmax(logits[0, len(dec) - 1])))
      out.append(dec[-1])
      if out[-1] == 1:
        break
  return out + [0] * (n - len(out))


@pytest.mark.parametrize('family', sorted(CFGS))
def test_greedy_matches_naive_loop_and_beam1(family):
  cfg = CFGS[family]
  params = init_params(cfg, seed=4)
  # Right-padded rows of different lengths in one batch: each continues after its own last token.
  inputs = np.array([[3, 4, 5, 6, 2], [5, 2, 3, 0, 0], [4, 0, 0, 0, 0]], np.int32)
  got = np.asarray(decoding.greedy_decode(params, cfg, inputs, max_new_tokens=6))
  for row, g in zip(inputs, got):
    want = naive_greedy(params, cfg, row, 6)
    assert g.tolist() == want
  beam1, _ = decoding.beam_search(params, cfg, inputs, max_new_tokens=6, beam_size=1)
  np.testing.assert_array_equal(np.asarray(beam1), got)


@pytest.mark.parametrize('family', sorted(CFGS))
def test_wide_beam_is_exhaustive_search(family):
  """With beam_size >= V**(n-1) nothing is pruned, so the best beam is the best sequence (alpha=0)."""
  cfg = CFGS[family]
  params = init_params(cfg, seed=5)
  n, v = 3, cfg.vocab_size
  inputs = np.array([[3, 5, 4, 1]], np.int32)
  tokens, scores = decoding.beam_search(params, cfg, inputs, max_new_tokens=n, beam_size=v ** (n - 1),
                                        alpha=0.0, return_all_beams=True)
  # Every distinct continuation (0 after EOS; pad 0 itself is a token the model may pick).
  cands = set()
  for seq in itertools.product(range(v), repeat=n):
    seq = list(seq)
    if 1 in seq:
      i = seq.index(1)
      seq = seq[:i + 1] + [0] * (n - i - 1)
    cands.add(tuple(seq))
  cands = np.array(sorted(cands), np.int32)
  logp = decoding.sequence_log_prob(params, cfg, np.repeat(inputs, len(cands), 0), cands)
  best = cands[np.argmax(logp)]
  assert np.asarray(tokens)[0, 0].tolist() == best.tolist()
  np.testing.assert_allclose(float(scores[0, 0]), logp.max(), rtol=1e-5, atol=1e-5)
  # Each returned beam's score is its sequence's log-probability, and beams are sorted.
  lp = decoding.sequence_log_prob(params, cfg, np.repeat(inputs, 5, 0), np.asarray(tokens)[0, :5])
  np.testing.assert_allclose(np.asarray(scores)[0, :5], lp, rtol=1e-5, atol=1e-5)
  assert np.all(np.diff(np.asarray(scores)[0]) <= 1e-6)
