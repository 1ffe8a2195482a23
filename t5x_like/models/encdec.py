"""T5 v1.1 / mT5-style encoder-decoder and its config.

Pre-norm RMSNorm blocks, T5 relative position buckets (one bias table per stack, shared by its layers),
gated-GELU MLP, no attention scaling (T5 folds it into the query init), untied LM head. Consumes the
batches of seqio's EncDecFeatureConverter directly.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from t5x_like.models import layers


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EncDecConfig:
  vocab_size: int = 32128
  embed_dim: int = 512
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  num_heads: int = 6
  head_dim: int = 64
  mlp_dim: int = 1024
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  rms_norm_eps: float = 1e-6
  mlp_activation: str = 'gelu_tanh'  # T5 v1.1 / mT5 use tanh-approximated GELU ("gelu_new")
  tie_embeddings: bool = False       # v1.1: untied head
  dropout_rate: float = 0.0
  dtype: str = 'bfloat16'
  param_dtype: str = 'float32'
  scan_layers: bool = True
  remat_policy: str = 'dots_and_fused_attention'  # see layers.REMAT_POLICIES
  attention_impl: Optional[str] = None

  family = 'encdec'

  def __post_init__(self):
    if self.remat_policy not in layers.REMAT_POLICIES:
      raise ValueError(f'EncDecConfig.remat_policy={self.remat_policy!r}; choose one of '
                       f'{sorted(layers.REMAT_POLICIES)}')

  def num_params(self, include_embeddings: bool = True) -> int:
    d, hd, f = self.embed_dim, self.num_heads * self.head_dim, self.mlp_dim
    attn = 4 * d * hd
    mlp = 3 * d * f
    enc = self.num_encoder_layers * (attn + mlp + 2 * d) + d
    dec = self.num_decoder_layers * (2 * attn + mlp + 3 * d) + d
    rel = 2 * self.num_heads * self.relative_attention_num_buckets
    n = enc + dec + rel
    if include_embeddings:
      n += self.vocab_size * d * (1 if self.tie_embeddings else 2)
    return n

  def flops_per_token(self, seq_len: int, inputs_len: Optional[int] = None) -> float:
    """Training FLOPs per target token (6N + attention), targets of seq_len and inputs of inputs_len
    (default seq_len): the encoder's share is scaled by inputs_len / seq_len."""
    li, lt = inputs_len or seq_len, seq_len
    d, hd, f = self.embed_dim, self.num_heads * self.head_dim, self.mlp_dim
    enc = self.num_encoder_layers * (4 * d * hd + 3 * d * f) * li / lt
    dec = self.num_decoder_layers * (8 * d * hd + 3 * d * f) + self.vocab_size * d
    # encoder self-attention (li keys per input token), causal decoder self-attention, cross-attention
    attn = 12 * hd * (self.num_encoder_layers * li * li / lt + self.num_decoder_layers * (0.5 * lt + li))
    return 6 * (enc + dec) + attn


def _dense_init(scale: float = 1.0):
  return nn.initializers.variance_scaling(scale, 'fan_in', 'normal')


class EncoderBlock(nn.Module):
  config: EncDecConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, mask, bias):
    cfg = self.config
    dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    norm = lambda name: layers.RMSNorm(cfg.rms_norm_eps, dtype=dtype, param_dtype=pdtype, name=name)
    drop = lambda y: nn.Dropout(cfg.dropout_rate)(y, deterministic=self.deterministic)
    h = norm('attention_norm')(x)
    h = _t5_attention(cfg, 'attention')(h, h, mask=mask, bias=bias, deterministic=self.deterministic)
    x = x + drop(h)
    h = norm('mlp_norm')(x)
    h = layers.GatedMLP(cfg.mlp_dim, cfg.mlp_activation, dtype=dtype, param_dtype=pdtype,
                        kernel_init=_dense_init(), out_init=_dense_init(),
                        dropout_rate=cfg.dropout_rate, name='mlp')(h, self.deterministic)
    x = x + drop(h)
    x = layers.constrain(x, ('activation_batch', 'activation_length', 'activation_embed'))
    self.sow('intermediates', 'hidden', x)
    return x, None


class DecoderBlock(nn.Module):
  config: EncDecConfig
  deterministic: bool = True
  decode: Optional[str] = None  # see layers.Attention

  @nn.compact
  def __call__(self, x, encoded, self_mask, cross_mask, bias, positions):
    cfg = self.config
    dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    norm = lambda name: layers.RMSNorm(cfg.rms_norm_eps, dtype=dtype, param_dtype=pdtype, name=name)
    drop = lambda y: nn.Dropout(cfg.dropout_rate)(y, deterministic=self.deterministic)
    step = self.decode == 'step'
    h = norm('self_attention_norm')(x)
    h = _t5_attention(cfg, 'self_attention')(h, h, mask=self_mask, bias=bias,
                                             deterministic=self.deterministic, decode=self.decode,
                                             cache_index=positions[:, 0] if step else None)
    x = x + drop(h)
    h = norm('cross_attention_norm')(x)
    # Decode steps read the encoder's keys and values cached at prefill (x_kv=None).
    h = _t5_attention(cfg, 'cross_attention')(h, None if step else encoded, mask=cross_mask,
                                              deterministic=self.deterministic, decode=self.decode)
    x = x + drop(h)
    h = norm('mlp_norm')(x)
    h = layers.GatedMLP(cfg.mlp_dim, cfg.mlp_activation, dtype=dtype, param_dtype=pdtype,
                        kernel_init=_dense_init(), out_init=_dense_init(),
                        dropout_rate=cfg.dropout_rate, name='mlp')(h, self.deterministic)
    x = x + drop(h)
    x = layers.constrain(x, ('activation_batch', 'activation_length', 'activation_embed'))
    self.sow('intermediates', 'hidden', x)
    return x, None


def _t5_attention(cfg: EncDecConfig, name: str) -> layers.Attention:
  return layers.Attention(
      num_heads=cfg.num_heads, num_kv_heads=cfg.num_heads, head_dim=cfg.head_dim,
      dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rope_theta=None,
      scale=1.0, q_init=_dense_init(1.0 / cfg.head_dim), kv_init=_dense_init(),
      out_init=_dense_init(), dropout_rate=cfg.dropout_rate, implementation=cfg.attention_impl,
      name=name)


class EncoderDecoder(nn.Module):
  config: EncDecConfig

  def setup(self):
    cfg = self.config
    dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    self.token_embed = layers.Embed(cfg.vocab_size, cfg.embed_dim, nn.initializers.normal(1.0),
                                    dtype=dtype, param_dtype=pdtype)
    self.encoder = Encoder(cfg)
    self.decoder = DecoderStack(cfg)
    if not cfg.tie_embeddings:
      self.lm_head = layers.DenseGeneral((cfg.vocab_size,), ('embed', 'vocab'),
                                         kernel_init=_dense_init(), dtype=dtype, param_dtype=pdtype)

  def encode(self, batch: dict, deterministic: bool = True):
    tokens = batch['encoder_input_tokens']
    segments = batch.get('encoder_segment_ids')
    if segments is None:
      segments = (tokens > 0).astype(jnp.int32)
    return self.encoder(self.token_embed(tokens), segments, tokens > 0, deterministic)

  def decode(self, batch: dict, encoded, deterministic: bool = True, decode: Optional[str] = None,
             decode_length: Optional[int] = None, output: str = 'logits'):
    """Logits [batch, length, vocab] of the decoder given `encoded`. `decode` ('prefill' | 'step', with
    mutable=['cache']) runs the cached autoregressive path of layers.Attention: a step takes one token
    per row, `decoder_input_tokens` [batch, 1] at `decoder_positions` [batch, 1], and needs
    `decode_length`, the length of the buffer given at prefill."""
    cfg = self.config
    enc_tokens = batch['encoder_input_tokens']
    enc_segments = batch.get('encoder_segment_ids')
    tokens = batch['decoder_input_tokens']
    dec_segments = batch.get('decoder_segment_ids')
    positions = batch.get('decoder_positions')
    if decode == 'step' and (positions is None or tokens.shape[1] != 1 or decode_length is None):
      raise ValueError("decode='step' takes decoder_input_tokens [batch, 1], decoder_positions and "
                       'decode_length')
    if enc_segments is None:
      enc_segments = jnp.ones_like(enc_tokens)
      dec_segments = jnp.ones_like(tokens)
    x = self.decoder(self.token_embed(tokens), encoded, dec_segments, enc_segments, enc_tokens > 0,
                     deterministic, decode, positions, decode_length)
    if cfg.tie_embeddings:
      # T5 v1.0 rescales before the tied projection.
      x = x * cfg.embed_dim ** -0.5
    if output == 'hidden' and not self.is_initializing():
      return layers.constrain(x, ('activation_batch', 'activation_length', 'activation_embed'))
    if cfg.tie_embeddings:
      logits = self.token_embed.attend(x)
    else:
      logits = self.lm_head(x)
    logits = logits.astype(jnp.float32)
    return layers.constrain(logits, ('activation_batch', 'activation_length', 'activation_vocab'))

  def __call__(self, batch: dict, deterministic: bool = True, output: str = 'logits'):
    """Logits [batch, length, vocab]; output='hidden': the decoder's final hidden states, which
    `@ output_kernel(params)` turns into the logits (for losses.fused_token_losses)."""
    return self.decode(batch, self.encode(batch, deterministic), deterministic, output=output)

  def output_kernel(self, params) -> jax.Array:
    """The [embed, vocab] matrix that maps output='hidden' to the logits."""
    if self.config.tie_embeddings:
      return params['token_embed']['embedding'].T
    return params['lm_head']['kernel']


class Encoder(nn.Module):
  config: EncDecConfig

  @nn.compact
  def __call__(self, x, segments, valid, deterministic: bool):
    cfg = self.config
    dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    length = x.shape[1]
    bias = layers.RelativePositionBias(cfg.relative_attention_num_buckets,
                                       cfg.relative_attention_max_distance, cfg.num_heads,
                                       bidirectional=True, dtype=dtype, param_dtype=pdtype,
                                       name='relpos_bias')(length, length)
    mask = layers.segment_mask(segments, segments, causal=False, kv_valid=valid)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    self.sow('intermediates', 'embedded', x)
    x = layers.apply_layers(EncoderBlock, dict(config=cfg, deterministic=deterministic), x,
                            (mask, bias), num_layers=cfg.num_encoder_layers, scan=cfg.scan_layers,
                            remat_policy=cfg.remat_policy)
    x = layers.RMSNorm(cfg.rms_norm_eps, dtype=dtype, param_dtype=pdtype, name='final_norm')(x)
    return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class DecoderStack(nn.Module):
  config: EncDecConfig

  @nn.compact
  def __call__(self, x, encoded, segments, enc_segments, enc_valid, deterministic: bool,
               decode: Optional[str] = None, positions=None, decode_length: Optional[int] = None):
    cfg = self.config
    dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    length = x.shape[1]
    relpos = layers.RelativePositionBias(cfg.relative_attention_num_buckets,
                                         cfg.relative_attention_max_distance, cfg.num_heads,
                                         bidirectional=False, dtype=dtype, param_dtype=pdtype,
                                         name='relpos_bias')
    if decode == 'step':  # each row's query at its own position, against the whole cached buffer
      bias, self_mask = relpos(1, decode_length, q_positions=positions), None
    else:
      bias = relpos(length, length)
      self_mask = layers.segment_mask(segments, segments, causal=True)
    cross_mask = layers.segment_mask(segments, enc_segments, causal=False, kv_valid=enc_valid)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    self.sow('intermediates', 'embedded', x)
    x = layers.apply_layers(DecoderBlock, dict(config=cfg, deterministic=deterministic, decode=decode),
                            x, (encoded, self_mask, cross_mask, bias, positions),
                            num_layers=cfg.num_decoder_layers, scan=cfg.scan_layers,
                            remat_policy=cfg.remat_policy)
    x = layers.RMSNorm(cfg.rms_norm_eps, dtype=dtype, param_dtype=pdtype, name='final_norm')(x)
    return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
