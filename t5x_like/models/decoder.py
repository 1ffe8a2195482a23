"""Llama-style decoder-only language model and its config.

RMSNorm (pre-norm), rotary or learned absolute positions, SwiGLU MLP, grouped-query attention, tied or
untied output embedding. Consumes the batches of seqio's DecoderFeatureConverter directly:
`decoder_input_tokens` (+ `decoder_segment_ids` / `decoder_positions` when packed).
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
class RopeScaling:
  """Llama 3.1's rescaling of the rotary frequencies for long contexts (HF rope_type 'llama3'; the
  defaults are Llama 3.1's, Llama 3.2 uses factor 32): layers.rope_inverse_frequencies."""
  factor: float = 8.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192

  def __post_init__(self):
    if not (self.factor >= 1 and 0 < self.low_freq_factor < self.high_freq_factor
            and self.original_max_position_embeddings > 0):
      raise ValueError(f'DecoderConfig.rope_scaling: {self} needs factor >= 1, 0 < low_freq_factor < '
                       'high_freq_factor and original_max_position_embeddings > 0')


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  vocab_size: int = 32000
  embed_dim: int = 512
  num_layers: int = 8
  num_heads: int = 8
  num_kv_heads: int = 8          # < num_heads: grouped-query attention
  head_dim: int = 64
  mlp_dim: int = 1408
  rms_norm_eps: float = 1e-5
  # 'rope' (Llama) or 'learned' (absolute position table, as in the cloned-language experiments).
  position_embedding: str = 'rope'
  rope_theta: float = 10000.0
  rope_scaling: Optional[RopeScaling] = None  # e.g. @RopeScaling() for Llama 3.1 and later
  max_length: int = 2048         # size of the learned position table; unused with rope
  tie_embeddings: bool = False
  dropout_rate: float = 0.0
  init_std: float = 0.02
  dtype: str = 'bfloat16'        # compute dtype; parameters stay in param_dtype
  param_dtype: str = 'float32'
  scan_layers: bool = True
  remat_policy: str = 'dots_and_fused_attention'  # see layers.REMAT_POLICIES
  attention_impl: Optional[str] = None  # None (XLA decides) | 'xla' | 'cudnn'

  family = 'decoder'

  def __post_init__(self):
    if isinstance(self.rope_scaling, dict):  # as model.json holds it
      object.__setattr__(self, 'rope_scaling', RopeScaling(**self.rope_scaling))
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f'DecoderConfig.num_heads={self.num_heads} is not a multiple of '
                       f'num_kv_heads={self.num_kv_heads}')
    if self.position_embedding not in ('rope', 'learned'):
      raise ValueError(f"DecoderConfig.position_embedding={self.position_embedding!r}; "
                       "use 'rope' or 'learned'")
    if self.rope_scaling is not None and self.position_embedding != 'rope':
      raise ValueError(f'DecoderConfig.rope_scaling={self.rope_scaling} needs '
                       f"position_embedding='rope', not {self.position_embedding!r}")
    if self.remat_policy not in layers.REMAT_POLICIES:
      raise ValueError(f'DecoderConfig.remat_policy={self.remat_policy!r}; choose one of '
                       f'{sorted(layers.REMAT_POLICIES)}')

  def num_params(self, include_embeddings: bool = True) -> int:
    d, h, kv, hd, f = self.embed_dim, self.num_heads, self.num_kv_heads, self.head_dim, self.mlp_dim
    per_layer = d * hd * (h + 2 * kv) + h * hd * d + 3 * d * f + 2 * d
    n = self.num_layers * per_layer + d
    if include_embeddings:
      n += self.vocab_size * d * (1 if self.tie_embeddings else 2)
      if self.position_embedding == 'learned':
        n += self.max_length * d
    return n

  def flops_per_token(self, seq_len: int) -> float:
    """Training FLOPs per token: 6 x (non-embedding params + LM head) + causal attention (PaLM, App. B).

    Attention: 12 * layers * heads * head_dim * seq_len, halved for the causal mask.
    """
    matmul_params = self.num_params(include_embeddings=False) + self.vocab_size * self.embed_dim
    attn = 12 * self.num_layers * self.num_heads * self.head_dim * seq_len / 2
    return 6 * matmul_params + attn


class DecoderBlock(nn.Module):
  config: DecoderConfig
  deterministic: bool = True
  decode: Optional[str] = None  # see layers.Attention

  @nn.compact
  def __call__(self, x, mask, positions):
    cfg = self.config
    dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    init = nn.initializers.normal(cfg.init_std)
    norm = lambda name: layers.RMSNorm(cfg.rms_norm_eps, dtype=dtype, param_dtype=pdtype, name=name)
    h = norm('attention_norm')(x)
    h = layers.Attention(
        num_heads=cfg.num_heads, num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, dtype=dtype,
        param_dtype=pdtype, rope_theta=cfg.rope_theta if cfg.position_embedding == 'rope' else None,
        rope_scaling=cfg.rope_scaling,
        q_init=init, kv_init=init, out_init=init, dropout_rate=cfg.dropout_rate,
        implementation=cfg.attention_impl, name='attention')(
            h, h, mask=mask, q_positions=positions, kv_positions=positions,
            deterministic=self.deterministic, decode=self.decode,
            cache_index=positions[:, 0] if self.decode == 'step' else None,
            causal=mask is None and self.decode != 'step')
    h = nn.Dropout(cfg.dropout_rate)(h, deterministic=self.deterministic)
    x = x + h
    h = norm('mlp_norm')(x)
    h = layers.GatedMLP(cfg.mlp_dim, 'silu', dtype=dtype, param_dtype=pdtype, kernel_init=init,
                        out_init=init, dropout_rate=cfg.dropout_rate, name='mlp')(
                            h, deterministic=self.deterministic)
    h = nn.Dropout(cfg.dropout_rate)(h, deterministic=self.deterministic)
    x = x + h
    x = layers.constrain(x, ('activation_batch', 'activation_length', 'activation_embed'))
    self.sow('intermediates', 'hidden', x)
    return x, None


class Decoder(nn.Module):
  config: DecoderConfig

  @nn.compact
  def __call__(self, batch: dict, deterministic: bool = True, decode: Optional[str] = None,
               output: str = 'logits'):
    """Logits [batch, length, vocab]. `decode` ('prefill' | 'step', with mutable=['cache']) runs the
    cached autoregressive path of layers.Attention: a step takes one token per row,
    `decoder_input_tokens` [batch, 1] at `decoder_positions` [batch, 1].
    output='hidden': the final hidden states [batch, length, embed] (compute dtype) instead, which
    `@ output_kernel(params)` turns into the logits (for losses.fused_token_losses)."""
    cfg = self.config
    dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    tokens = batch['decoder_input_tokens']
    bsz, length = tokens.shape
    segments = batch.get('decoder_segment_ids')
    positions = batch.get('decoder_positions')
    if decode == 'step' and (positions is None or length != 1):
      raise ValueError("decode='step' takes decoder_input_tokens [batch, 1] and decoder_positions")
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (bsz, length))
    # Unpacked rows (no segment ids): plain causal attention, which the blocks ask of the kernel
    # (is_causal) rather than building a [batch, 1, length, length] mask; padding at a row's end is
    # never attended to by the real tokens before it.
    mask = (None if decode == 'step' or segments is None else
            layers.segment_mask(segments, segments, causal=True))

    embed = layers.Embed(cfg.vocab_size, cfg.embed_dim, nn.initializers.normal(cfg.init_std),
                         dtype=dtype, param_dtype=pdtype, name='token_embed')
    x = embed(tokens)
    if cfg.position_embedding == 'learned':
      if length > cfg.max_length:
        raise ValueError(f'sequence length {length} > DecoderConfig.max_length={cfg.max_length}')
      table = layers.param_with_axes(self, 'position_embedding',
                                     nn.initializers.normal(cfg.init_std),
                                     (cfg.max_length, cfg.embed_dim), ('length', 'embed'), pdtype)
      x = x + jnp.take(table, positions, axis=0).astype(dtype)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    x = layers.constrain(x, ('activation_batch', 'activation_length', 'activation_embed'))
    self.sow('intermediates', 'embedded', x)

    x = layers.apply_layers(DecoderBlock, dict(config=cfg, deterministic=deterministic, decode=decode),
                            x,
                            (mask, positions), num_layers=cfg.num_layers, scan=cfg.scan_layers,
                            remat_policy=cfg.remat_policy)
    x = layers.RMSNorm(cfg.rms_norm_eps, dtype=dtype, param_dtype=pdtype, name='final_norm')(x)
    x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    if output == 'hidden' and not self.is_initializing():
      return layers.constrain(x, ('activation_batch', 'activation_length', 'activation_embed'))
    if cfg.tie_embeddings:
      logits = embed.attend(x)
    else:
      logits = layers.DenseGeneral((cfg.vocab_size,), ('embed', 'vocab'),
                                   kernel_init=nn.initializers.normal(cfg.init_std), dtype=dtype,
                                   param_dtype=pdtype, name='lm_head')(x)
    logits = logits.astype(jnp.float32)
    return layers.constrain(logits, ('activation_batch', 'activation_length', 'activation_vocab'))

  def output_kernel(self, params) -> jax.Array:
    """The [embed, vocab] matrix that maps output='hidden' to the logits."""
    if self.config.tie_embeddings:
      return params['token_embed']['embedding'].T
    return params['lm_head']['kernel']
