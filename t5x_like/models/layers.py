"""Building blocks shared by both model families.

Every parameter is created with its logical axis names (`nn.with_logical_partitioning`), and the main
activations are constrained by logical names too; `t5x_like/partitioning.py` holds the one table that maps
those names to mesh axes.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = jnp.dtype
Initializer = Callable[..., jax.Array]


def constrain(x: jax.Array, names: Sequence[Optional[str]]) -> jax.Array:
  """Sharding constraint by logical names (a no-op outside a mesh / rules context)."""
  return nn.with_logical_constraint(x, tuple(names))


def param_with_axes(module: nn.Module, name: str, init: Initializer, shape, axes, dtype) -> jax.Array:
  return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), shape, dtype)


class RMSNorm(nn.Module):
  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    # Statistics in fp32 whatever the compute dtype: bf16 variance underflows for small activations.
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(var + self.epsilon)
    scale = param_with_axes(self, 'scale', nn.initializers.ones, (x.shape[-1],), ('embed',),
                            self.param_dtype)
    return (y * scale.astype(jnp.float32)).astype(self.dtype)


class DenseGeneral(nn.Module):
  """x[..., in_dims] @ kernel[in_dims..., out_dims...] with named kernel axes."""
  features: tuple[int, ...]
  kernel_axes: tuple[str, ...]
  in_axes: int = 1  # how many trailing input dims are contracted
  kernel_init: Initializer = nn.initializers.lecun_normal()
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    in_shape = x.shape[-self.in_axes:]
    kernel_shape = tuple(in_shape) + tuple(self.features)
    # Fan-in based initialisers see the flattened 2-D shape, as in T5X.
    fan_in = int(np.prod(in_shape))
    fan_out = int(np.prod(self.features))

    def init(key, shape, dtype):
      return self.kernel_init(key, (fan_in, fan_out), dtype).reshape(shape)

    kernel = param_with_axes(self, 'kernel', init, kernel_shape, self.kernel_axes, self.param_dtype)
    kernel = kernel.astype(self.dtype)
    x = x.astype(self.dtype)
    contract_x = tuple(range(x.ndim - self.in_axes, x.ndim))
    contract_k = tuple(range(self.in_axes))
    return jax.lax.dot_general(x, kernel, ((contract_x, contract_k), ((), ())))


class Embed(nn.Module):
  num_embeddings: int
  features: int
  embedding_init: Initializer = nn.initializers.normal(stddev=1.0)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    self.embedding = param_with_axes(self, 'embedding', self.embedding_init,
                                     (self.num_embeddings, self.features), ('vocab', 'embed'),
                                     self.param_dtype)

  def __call__(self, ids):
    # Gather from a replicated table: a gather from a vocab/embed-sharded table into batch-sharded
    # activations makes XLA replicate-and-repartition anyway (an "involuntary full rematerialization").
    table = constrain(self.embedding, (None, None))
    return jnp.take(table, ids, axis=0).astype(self.dtype)

  def attend(self, x):
    """Tied output projection: logits = x @ embedding.T."""
    return jnp.einsum('...d,vd->...v', x.astype(self.dtype), self.embedding.astype(self.dtype))


def rotate_half(x):
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


def rope_inverse_frequencies(head_dim: int, theta: float, scaling=None) -> np.ndarray:
  """The rotary frequencies [head_dim / 2], float32; with `scaling` (decoder.RopeScaling: factor,
  low_freq_factor, high_freq_factor, original_max_position_embeddings), Llama 3.1's long-context
  rescaling (HF rope_type 'llama3'): wavelengths longer than the original context / low_freq_factor
  are stretched by `factor`, those shorter than it / high_freq_factor kept, and those between
  interpolated."""
  inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
  if scaling is None:
    return inv_freq
  context = scaling.original_max_position_embeddings
  wavelen = 2 * np.pi / inv_freq
  stretched = np.where(wavelen > context / scaling.low_freq_factor, inv_freq / scaling.factor, inv_freq)
  smooth = ((context / wavelen - scaling.low_freq_factor)
            / (scaling.high_freq_factor - scaling.low_freq_factor))
  between = ((wavelen >= context / scaling.high_freq_factor)
             & (wavelen <= context / scaling.low_freq_factor))
  out = np.where(between, (1 - smooth) * stretched / scaling.factor + smooth * stretched, stretched)
  return out.astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array, theta: float, scaling=None) -> jax.Array:
  """Rotary embeddings with the half-split layout that Hugging Face Llama uses.

  x: [batch, length, heads, head_dim]; positions: [batch, length]; scaling: see
  rope_inverse_frequencies.
  """
  inv_freq = rope_inverse_frequencies(x.shape[-1], theta, scaling)
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [b, l, d/2]
  emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
  cos, sin = jnp.cos(emb), jnp.sin(emb)
  x32 = x.astype(jnp.float32)
  return (x32 * cos + rotate_half(x32) * sin).astype(x.dtype)


def relative_position_bucket(relative_position, bidirectional: bool, num_buckets: int,
                             max_distance: int):
  """T5's bucketing of key-minus-query distances (log-spaced beyond num_buckets/2 exact ones).

  numpy in, numpy out (static shapes, computed at trace time); jax in, jax out (decode steps)."""
  xp = np if isinstance(relative_position, np.ndarray) else jnp
  ret = 0
  n = -relative_position
  if bidirectional:
    num_buckets //= 2
    ret += (n < 0).astype(np.int32) * num_buckets
    n = xp.abs(n)
  else:
    n = xp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  val_if_large = max_exact + (
      xp.log(xp.maximum(n, 1).astype(np.float32) / max_exact) /
      np.log(max_distance / max_exact) * (num_buckets - max_exact)).astype(np.int32)
  val_if_large = xp.minimum(val_if_large, num_buckets - 1)
  return ret + xp.where(is_small, n, val_if_large)


class RelativePositionBias(nn.Module):
  """T5 relative attention bias: [1, heads, q_len, k_len], computed once and shared by all layers."""
  num_buckets: int
  max_distance: int
  num_heads: int
  bidirectional: bool
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, q_len: int, k_len: int, q_positions=None):
    """[1, heads, q_len, k_len]; with `q_positions` [batch, q_len] (decode steps, where each row's
    query sits at its own position) [batch, heads, q_len, k_len]."""
    table = param_with_axes(self, 'rel_embedding', nn.initializers.normal(stddev=1.0),
                            (self.num_heads, self.num_buckets), ('heads', 'relpos_buckets'),
                            self.param_dtype)
    if q_positions is None:
      rel = np.arange(k_len)[None, :] - np.arange(q_len)[:, None]
      buckets = relative_position_bucket(rel, self.bidirectional, self.num_buckets, self.max_distance)
      return jnp.take(table, jnp.asarray(buckets), axis=1)[None].astype(self.dtype)
    rel = jnp.arange(k_len)[None, None, :] - q_positions[:, :, None]
    buckets = relative_position_bucket(rel, self.bidirectional, self.num_buckets, self.max_distance)
    return jnp.moveaxis(jnp.take(table, buckets, axis=1), 0, 1).astype(self.dtype)


class Attention(nn.Module):
  """Multi-head / grouped-query attention through `jax.nn.dot_product_attention`.

  `implementation` is passed through: None lets XLA choose, 'cudnn' asks for the fused GPU kernel.

  Autoregressive decoding keeps keys and values in the 'cache' collection (`decode`):
    'prefill': a normal call on the whole [batch, L] buffer that also stores its keys and values;
    'step': x_q is one token per row at position `cache_index` [batch]; its key and value are written
      into the cache there and the query attends to cache positions <= cache_index (the mask argument
      is not used). With x_kv=None (cross-attention) the keys and values stored at prefill are used.
  """
  num_heads: int
  num_kv_heads: int
  head_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  rope_theta: Optional[float] = None  # None: no rotary embedding (T5)
  rope_scaling: Optional[object] = None  # decoder.RopeScaling (Llama 3.1's), or None
  scale: Optional[float] = None       # None: 1/sqrt(head_dim); T5 uses 1.0
  q_init: Initializer = nn.initializers.lecun_normal()
  kv_init: Initializer = nn.initializers.lecun_normal()
  out_init: Initializer = nn.initializers.lecun_normal()
  dropout_rate: float = 0.0
  implementation: Optional[str] = None

  @nn.compact
  def __call__(self, x_q, x_kv, *, mask=None, bias=None, q_positions=None, kv_positions=None,
               deterministic: bool = True, decode: Optional[str] = None, cache_index=None,
               causal: bool = False):
    dense = functools.partial(DenseGeneral, dtype=self.dtype, param_dtype=self.param_dtype)
    q = dense((self.num_heads, self.head_dim), ('embed', 'heads', 'kv'), kernel_init=self.q_init,
              name='query')(x_q)
    if self.rope_theta is not None:
      q = apply_rope(q, q_positions, self.rope_theta, self.rope_scaling)
    if decode == 'step' and x_kv is None:
      k, v = self.get_variable('cache', 'cached_key'), self.get_variable('cache', 'cached_value')
    else:
      k = dense((self.num_kv_heads, self.head_dim), ('embed', 'kv_heads', 'kv'),
                kernel_init=self.kv_init, name='key')(x_kv)
      v = dense((self.num_kv_heads, self.head_dim), ('embed', 'kv_heads', 'kv'),
                kernel_init=self.kv_init, name='value')(x_kv)
      if self.rope_theta is not None:
        k = apply_rope(k, kv_positions, self.rope_theta, self.rope_scaling)
      if decode == 'prefill':
        self.put_variable('cache', 'cached_key', k)
        self.put_variable('cache', 'cached_value', v)
      elif decode == 'step':
        rows = jnp.arange(k.shape[0])
        k = self.get_variable('cache', 'cached_key').at[rows, cache_index].set(k[:, 0])
        v = self.get_variable('cache', 'cached_value').at[rows, cache_index].set(v[:, 0])
        self.put_variable('cache', 'cached_key', k)
        self.put_variable('cache', 'cached_value', v)
        mask = (jnp.arange(k.shape[1])[None, :] <= cache_index[:, None])[:, None, None, :]
      elif decode is not None:
        raise ValueError(f"decode={decode!r}; use None, 'prefill' or 'step'")
    q = constrain(q, ('activation_batch', 'activation_length', 'activation_heads', 'activation_kv'))
    k = constrain(k, ('activation_batch', 'activation_length', 'activation_kv_heads', 'activation_kv'))
    v = constrain(v, ('activation_batch', 'activation_length', 'activation_kv_heads', 'activation_kv'))
    if self.dropout_rate > 0.0 and not deterministic:
      # jax.nn.dot_product_attention has no attention dropout; do it explicitly.
      if causal:
        tril = jnp.tril(jnp.ones((q.shape[1], k.shape[1]), dtype=bool))[None, None]
        mask = tril if mask is None else mask & tril
      out = _attention_with_dropout(self, q, k, v, mask, bias)
    else:
      # causal=True instead of a mask: the kernel masks itself (cuDNN: no [batch, 1, q, k] bias
      # tensor read per layer, and its causal kernel skips the masked blocks).
      out = jax.nn.dot_product_attention(
          q, k, v, bias=None if bias is None else bias.astype(q.dtype), mask=mask,
          scale=self.scale, implementation=self.implementation, is_causal=causal)
    out = constrain(out, ('activation_batch', 'activation_length', 'activation_heads', 'activation_kv'))
    return dense((x_q.shape[-1],), ('heads', 'kv', 'embed'), in_axes=2, kernel_init=self.out_init,
                 name='out')(out)


def _attention_with_dropout(module: Attention, q, k, v, mask, bias):
  groups = q.shape[2] // k.shape[2]
  k = jnp.repeat(k, groups, axis=2)
  v = jnp.repeat(v, groups, axis=2)
  scale = module.scale if module.scale is not None else 1.0 / np.sqrt(q.shape[-1])
  logits = jnp.einsum('bqhd,bkhd->bhqk', q, k).astype(jnp.float32) * scale
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(q.dtype)
  keep = 1.0 - module.dropout_rate
  drop = jax.random.bernoulli(module.make_rng('dropout'), keep, probs.shape)
  probs = jnp.where(drop, probs / keep, 0).astype(q.dtype)
  return jnp.einsum('bhqk,bkhd->bqhd', probs, v)


class GatedMLP(nn.Module):
  """SwiGLU (Llama) or gated-GELU (T5 v1.1): wo(act(wi_0 x) * wi_1 x)."""
  hidden_dim: int
  activation: str = 'silu'  # 'silu' | 'gelu_tanh'
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Initializer = nn.initializers.lecun_normal()
  out_init: Initializer = nn.initializers.lecun_normal()
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    dense = functools.partial(DenseGeneral, dtype=self.dtype, param_dtype=self.param_dtype)
    act = {'silu': jax.nn.silu, 'gelu_tanh': functools.partial(jax.nn.gelu, approximate=True),
           'gelu': functools.partial(jax.nn.gelu, approximate=False)}[self.activation]
    h0 = dense((self.hidden_dim,), ('embed', 'mlp'), kernel_init=self.kernel_init, name='wi_0')(x)
    h1 = dense((self.hidden_dim,), ('embed', 'mlp'), kernel_init=self.kernel_init, name='wi_1')(x)
    h = act(h0) * h1
    h = constrain(h, ('activation_batch', 'activation_length', 'activation_mlp'))
    h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    return dense((x.shape[-1],), ('mlp', 'embed'), kernel_init=self.out_init, name='wo')(h)


def segment_mask(q_segments, kv_segments, causal: bool, kv_valid=None):
  """Boolean [batch, 1, q, k] mask: same segment, (optionally) causal, (optionally) valid keys."""
  mask = q_segments[:, :, None] == kv_segments[:, None, :]
  if causal:
    q_len, k_len = q_segments.shape[1], kv_segments.shape[1]
    mask = mask & jnp.tril(jnp.ones((q_len, k_len), dtype=bool))[None]
  if kv_valid is not None:
    mask = mask & kv_valid[:, None, :]
  return mask[:, None]


# The default is 'dots_and_fused_attention': MaxText's 'minimal' ('dots_with_no_batch_dims': keep the
# projections' outputs, recompute the element-wise work and the attention), plus the fused attention
# kernel's outputs where there is one (cuDNN: compiled for an H200, its forward then runs once instead
# of twice, for 6% more memory; BENCHMARKS.md). With XLA's attention the two policies are the same. Without remat, a scanned stack saves every
# intermediate of every layer in stacked buffers, which was the slowest choice measured on CPU
# (BENCHMARKS.md: 1.18x slower than this at the MaxText shape, 1.30x at the T5X shape).
def _dots_and_fused_attention(prim, *args, **params) -> bool:
  """Keep the projections' outputs and the fused attention kernel's (its output and softmax
  statistics, the cuDNN backward's residuals), so the kernel's forward is not run again in the
  backward pass (MaxText's 'minimal_flash')."""
  return (prim.name.startswith('dot_product_attention_fwd') or
          jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims(prim, *args, **params))


REMAT_POLICIES = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots': jax.checkpoint_policies.checkpoint_dots,
    'dots_with_no_batch_dims': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    'dots_and_fused_attention': _dots_and_fused_attention,
}


def apply_layers(block_cls, block_kwargs: dict, x, args: tuple, *, num_layers: int, scan: bool,
                 remat_policy: str, name: str = 'layers'):
  """Applies `num_layers` blocks (each `(x, *args) -> (x, None)`), scanned or unrolled.

  Must be called from inside a compact method: the blocks become children of that module. Scanned params
  carry a leading 'layers' axis (stacked, as T5X and MaxText store them); unrolled ones are `{name}_{i}`.
  Each block sows its output under intermediates/'hidden' so evaluators can read every layer.
  """
  if remat_policy not in REMAT_POLICIES:
    raise ValueError(f'remat_policy={remat_policy!r}; choose one of {sorted(REMAT_POLICIES)}')
  cls = block_cls
  if remat_policy != 'none':
    cls = nn.remat(cls, policy=REMAT_POLICIES[remat_policy], prevent_cse=not scan)
  if scan:
    # The decode cache stacks its layers on axis 1, so axis 0 is the batch in every layout (beam search
    # reorders rows with one gather for scanned and unrolled models alike).
    cls = nn.scan(cls, variable_axes={'params': 0, 'intermediates': 0, 'cache': 1},
                  split_rngs={'params': True, 'dropout': True},
                  in_axes=(nn.broadcast,) * len(args), length=num_layers,
                  metadata_params={nn.PARTITION_NAME: 'layers'})
    x, _ = cls(**block_kwargs, name=name)(x, *args)
    return x
  for i in range(num_layers):
    x, _ = cls(**block_kwargs, name=f'{name}_{i}')(x, *args)
  return x
