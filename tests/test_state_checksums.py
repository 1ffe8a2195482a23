"""The checksums saved with every checkpoint (t5x_like/state_checksums.py): independent of how the
arrays are laid out, changed by any single-bit change and by swaps, and compared path by path."""
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from t5x_like import state_checksums


def _tree(rng):
  return {'params': {'w': rng.standard_normal((16, 24)).astype(np.float32),
                     'e': rng.standard_normal((8, 4, 6)).astype(jnp.bfloat16)},
          'step': np.int32(7), 'done': np.array([True, False])}


def test_checksums_do_not_depend_on_the_mesh_or_sharding():
  tree = _tree(np.random.default_rng(0))
  on_host = state_checksums.checksums(tree)
  mesh = jax.make_mesh((2, 4), ('a', 'b'))
  for spec in (P('a', 'b'), P('b', None), P(None, 'a')):
    placed = dict(tree, params={
        'w': jax.device_put(tree['params']['w'], NamedSharding(mesh, spec)),
        'e': jax.device_put(tree['params']['e'], NamedSharding(mesh, P(*spec, None)))})
    assert state_checksums.checksums(placed) == on_host
  assert set(on_host) == {'params/w', 'params/e', 'step', 'done'}
  assert on_host['params/e']['dtype'] == 'bfloat16'


def test_any_single_bit_change_and_a_swap_of_two_elements_change_the_checksum():
  rng = np.random.default_rng(1)
  tree = _tree(rng)
  saved = state_checksums.checksums(tree)
  for name, width in (('w', np.uint32), ('e', np.uint16)):
    for _ in range(20):
      changed = {k: v.copy() for k, v in tree['params'].items()}
      bits = changed[name].view(width).reshape(-1)
      bits[rng.integers(bits.size)] ^= width(1) << width(rng.integers(8 * bits.itemsize))
      now = state_checksums.checksums(dict(tree, params=changed))
      assert now[f'params/{name}']['checksum'] != saved[f'params/{name}']['checksum']
      assert state_checksums.first_mismatch(saved, now).startswith(f'params/{name} (')
  swapped = tree['params']['w'].copy()
  swapped[0, 0], swapped[3, 5] = swapped[3, 5], swapped[0, 0]
  now = state_checksums.checksums(dict(tree, params=dict(tree['params'], w=swapped)))
  assert now['params/w']['checksum'] != saved['params/w']['checksum']


def test_only_arrays_present_on_both_sides_in_the_same_dtype_are_compared():
  tree = _tree(np.random.default_rng(2))
  saved = state_checksums.checksums(tree)
  assert state_checksums.first_mismatch(saved, saved) is None
  partial = state_checksums.checksums({'params': tree['params']})
  assert state_checksums.first_mismatch(saved, partial) is None
  as_f32 = state_checksums.checksums(
      dict(tree, params=dict(tree['params'], e=tree['params']['e'].astype(np.float32))))
  assert state_checksums.first_mismatch(saved, as_f32) is None
  changed = dict(tree, step=np.int32(8))
  msg = state_checksums.first_mismatch(saved, state_checksums.checksums(changed))
  assert msg.startswith('step (int32) reads back with checksum ') and 'but was saved with' in msg


def test_host_checksum_in_chunks_equals_the_device_checksum():
  rng = np.random.default_rng(3)
  arrays = [rng.standard_normal((17, 33)).astype(np.float32),
            rng.standard_normal((5, 7, 3)).astype(jnp.bfloat16),
            rng.integers(-9, 9, (13,)).astype(np.int32), rng.integers(0, 255, (40,)).astype(np.uint8),
            np.array([True, False, True]), np.float32(3.5)]
  for a in arrays:
    on_device = state_checksums.checksums({'a': a})['a']['checksum']
    for chunk in (7, 64, 1 << 20):  # chunks that end inside the array and one that holds it all
      assert state_checksums.host_checksum(a, chunk) == on_device, (a.dtype, a.shape, chunk)
  flipped = arrays[0].copy()
  flipped.view(np.uint32)[3, 4] ^= np.uint32(1)
  assert state_checksums.host_checksum(flipped, 7) != state_checksums.host_checksum(arrays[0], 7)
