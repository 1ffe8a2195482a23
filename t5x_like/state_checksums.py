"""Checksums of a pytree's arrays, saved with each checkpoint and compared after every restore.

Orbax and TensorStore store no checksum of array data: bits that change in storage, or in a host's
memory between the device copy and the write, read back without an error and training goes on from
wrong weights. Each checkpoint therefore carries, per array, a position-weighted sum of its raw bits
modulo 2**32, with odd weights: since an odd weight is invertible modulo 2**32, any change of a single
element changes the sum, and so do most swaps of two elements. Not a cryptographic hash: it guards
against accidents. (One weighted sum rather than a plain and a weighted one: on XLA:CPU two reductions
of the same array cost 4x one.)

Integer addition modulo 2**32 does not depend on the order of summation, so the checksums are the same
for any mesh, sharding or backend: a run resumed on another topology compares like with like. They are
computed on the devices (one reduction per array, where the state already is), and only one number per
array reaches the host.
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

_UINT_OF_SIZE = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}


def _bits(x: jax.Array) -> jax.Array:
  """The array's raw bits as uint32 words (64-bit elements give two words each)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  return jax.lax.bitcast_convert_type(x, _UINT_OF_SIZE[x.dtype.itemsize]).astype(jnp.uint32)


def _checksum(x: jax.Array) -> jax.Array:
  bits = _bits(x)
  # Row-major position of each element from iotas (no reshape: it could move a sharded array).
  position = jnp.zeros(bits.shape, jnp.uint32)
  stride = 1
  for dim in reversed(range(bits.ndim)):
    position = position + jax.lax.broadcasted_iota(jnp.uint32, bits.shape, dim) * np.uint32(
        stride % 2**32)
    stride *= bits.shape[dim]
  return jnp.sum(bits * (position * np.uint32(2) + np.uint32(1)), dtype=jnp.uint32)


@jax.jit
def _all_checksums(leaves: list) -> list:
  return [_checksum(x) for x in leaves]


def checksums(tree: Any) -> dict:
  """{'path/of/array': {'dtype': 'float32', 'checksum': int}} for every array of
  `tree` (global jax.Arrays on any mesh, or host arrays). Every process must call it together."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  paths = [jax.tree_util.keystr(p, simple=True, separator='/') for p, _ in flat]
  leaves = [jnp.asarray(x) if not isinstance(x, jax.Array) else x for _, x in flat]
  sums = jax.device_get(_all_checksums(leaves)) if leaves else []
  return {p: {'dtype': str(x.dtype), 'checksum': int(s)} for p, x, s in zip(paths, leaves, sums)}


def host_checksum(a: np.ndarray, chunk: int = 1 << 20) -> int:
  """`checksums`' number for one host array, computed with numpy `chunk` elements at a time: for
  code that holds one parameter at a time in host memory (the HF export), where a device copy of
  the array would double what it holds."""
  a = np.asarray(a)
  if a.dtype == np.bool_:
    words = a.reshape(-1)
  else:  # 8-byte elements as two 4-byte words each, in memory order, as jax's bitcast gives them
    words = a.reshape(-1).view(f'<u{min(a.dtype.itemsize, 4)}')
  total = 0
  for start in range(0, words.size, chunk):
    part = words[start:start + chunk].astype(np.uint32)
    position = np.arange(start, start + part.size, dtype=np.uint64).astype(np.uint32)
    total = (total + int(np.sum(part * (position * np.uint32(2) + np.uint32(1)), dtype=np.uint32))) % 2**32
  return total


def first_mismatch(saved: dict, restored: dict) -> Optional[str]:
  """The first array whose restored bits differ from those saved, in words; None when all agree.
  Arrays only one side has (a partial restore) or restored in another dtype are not compared."""
  for path in sorted(set(saved) & set(restored)):
    a, b = saved[path], restored[path]
    if a['dtype'] != b['dtype']:
      continue
    if a['checksum'] != b['checksum']:
      return (f'{path} ({a["dtype"]}) reads back with checksum {b["checksum"]:08x} but was saved '
              f'with {a["checksum"]:08x}: its bits changed after it was saved')
  return None

