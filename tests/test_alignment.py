"""Hidden-state and gradient alignment on a model whose cloned embeddings copy the originals (so the
two languages are the same language under other ids: alignment must be exactly 1 at every layer), and on
plain arrays with known answers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_like.evaluation import alignment, batches, hidden_states
from t5x_like.models import Decoder, DecoderConfig
from t5x_like.partitioning import unbox

BASE = 64


class TwoLanguageVocab:
  """The cloned-vocabulary contract (tasks/cloned.py) in miniature: byte-ish ids, language k = id + k*V."""
  num_languages = 2
  vocab_size = 2 * BASE

  def encode_as(self, text, language):
    return self.clone_ids(np.array([3 + b % (BASE - 3) for b in text.encode()]), language).tolist()

  def clone_ids(self, ids, language):
    ids = np.asarray(ids)
    return np.where(ids > 0, ids + language * BASE, 0)


LINES = ['a man rides a horse on the beach', 'two dogs play in the snow',
         'a woman reads a book in a cafe', 'children run across a green field',
         'an old car parked by the road', 'a cat sleeps on a warm windowsill',
         'people wait at the bus stop', 'a boy kicks a red ball'] * 3


def _model(scan=True, copy_clones=True):
  cfg = DecoderConfig(vocab_size=2 * BASE, embed_dim=32, num_layers=3, num_heads=4, num_kv_heads=2,
                      head_dim=8, mlp_dim=64, dtype='float32', position_embedding='learned',
                      max_length=64, scan_layers=scan)
  model = Decoder(cfg)
  params = unbox(model.init(jax.random.key(0), {'decoder_input_tokens': jnp.zeros((1, 8), jnp.int32)})
                 ['params'])
  if copy_clones:
    emb = params['token_embed']['embedding']
    params['token_embed']['embedding'] = emb.at[BASE:].set(emb[:BASE])
    head = params['lm_head']['kernel']
    params['lm_head']['kernel'] = head.at[:, BASE:].set(head[:, :BASE])
  return model, params


def _windows(mode='packed'):
  vocab = TwoLanguageVocab()
  ids = [vocab.encode_as(l, 0) for l in LINES]
  return vocab, batches.pack_windows(ids, 48, mode=mode)


@pytest.mark.parametrize('scan', [True, False])
def test_copied_clone_embeddings_align_perfectly_at_every_layer(scan):
  model, params = _model(scan)
  vocab, windows = _windows()
  res = alignment.hidden_alignment(model, params, vocab, windows, 1, batch_size=4)
  assert res['layers'] == ['embedding', 'block_0', 'block_1', 'block_2']
  np.testing.assert_allclose(res['raw'], 1.0, atol=1e-5)
  np.testing.assert_allclose(res['centred'], 1.0, atol=1e-5)
  # The control pairs different text and must be clearly below the matched pairs once centred.
  assert max(res['centred_mismatched']) < 0.9
  assert min(res['centred_gap']) > 0.1
  assert res['num_positions'] > 0 and res['num_sequences'] == windows['decoder_input_tokens'].shape[0]


def test_encdec_encoder_reads_the_windows_and_copied_clones_align():
  from t5x_like.models import EncDecConfig, EncoderDecoder
  cfg = EncDecConfig(vocab_size=2 * BASE, embed_dim=32, num_encoder_layers=2, num_decoder_layers=1,
                     num_heads=4, head_dim=8, mlp_dim=64, dtype='float32')
  model = EncoderDecoder(cfg)
  example = {'encoder_input_tokens': jnp.ones((1, 8), jnp.int32),
             'decoder_input_tokens': jnp.ones((1, 8), jnp.int32)}
  params = unbox(model.init(jax.random.key(0), example)['params'])
  emb = params['token_embed']['embedding']
  params['token_embed']['embedding'] = emb.at[BASE:].set(emb[:BASE])
  vocab, windows = _windows()
  res = alignment.hidden_alignment(model, params, vocab, windows, 1, batch_size=4)
  assert res['layers'] == ['embedding', 'block_0', 'block_1']  # the encoder's
  np.testing.assert_allclose(res['centred'], 1.0, atol=1e-5)
  assert min(res['centred_gap']) > 0.1


def test_independent_clone_embeddings_do_not_align_at_the_embedding_layer():
  model, params = _model(copy_clones=False)
  vocab, windows = _windows('stream')
  res = alignment.hidden_alignment(model, params, vocab, windows, 1, batch_size=4)
  # Untrained, with independent clone rows: the only shared part of the embedding output is the
  # position embedding, which centring + the control cancel; the gap is noise around 0.
  assert abs(res['centred_gap'][0]) < 0.1
  # The raw cosine is high anyway (shared positions): why it is never reported alone.
  assert res['raw'][0] > 0.3


def test_gradient_alignment_of_copied_clones():
  model, params = _model()
  vocab, windows = _windows('stream')
  res = alignment.gradient_alignment(model, params, vocab, windows, 1, batch_size=2, num_batches=3)
  # Same computation under other ids: every block's gradient is identical...
  assert res['non_vocab'] == pytest.approx(1.0, abs=1e-5)
  np.testing.assert_allclose(res['by_block'], 1.0, atol=1e-5)
  # ...but the embedding/output rows touched are disjoint, so the overall cosine is below 1.
  assert res['all'] < 0.999
  assert res['non_vocab_mismatched'] < 0.95


def test_stack_hidden_layouts_agree():
  h = jnp.arange(2 * 3 * 4, dtype=jnp.float32).reshape(2, 3, 4)
  scanned = {'embedded': (h,), 'layers': {'hidden': (jnp.stack([h + 1, h + 2]),)}}
  unrolled = {'embedded': (h,), 'layers_1': {'hidden': (h + 2,)}, 'layers_0': {'hidden': (h + 1,)}}
  np.testing.assert_array_equal(hidden_states.stack_hidden(scanned),
                                hidden_states.stack_hidden(unrolled))


def test_cosine_by_layer_centring_removes_a_shared_offset():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(2, 1, 50, 5, 16))
  offset = 20 * rng.normal(size=16)
  raw = alignment.cosine_by_layer(a + offset, b + offset)
  centred = alignment.cosine_by_layer(a + offset, b + offset, centre=True)
  assert raw[0] > 0.9           # a shared direction makes unrelated vectors look aligned
  assert abs(centred[0]) < 0.1  # centring shows they are not
