"""Device mesh, THE logical-axis rules table, and shardings derived from abstract shapes.

Mesh axes: 'data' (pure data parallel: params replicated), 'fsdp' (data parallel with parameters and
optimizer state sharded, ZeRO-3 style), 'tensor' (Megatron-style tensor parallelism inside a layer).

Multi-slice (TPU pods joined over the data-center network, DCN): `dcn_data` slices are laid along the
'data' axis with `mesh_utils.create_hybrid_device_mesh`, so only data-parallel gradient reductions cross
DCN while fsdp and tensor collectives stay on the fast ICI links inside a slice. Within a slice the ICI
sizes are `data x fsdp x tensor`; one of them may be -1 to take all remaining devices.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ('data', 'fsdp', 'tensor')

# One table. Parameter axes first, then activation axes. A logical name that maps to a tuple is sharded
# over the product of those mesh axes.
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    # parameters
    ('vocab', 'tensor'),
    ('embed', 'fsdp'),
    ('mlp', 'tensor'),
    ('heads', 'tensor'),
    ('kv_heads', 'tensor'),
    ('kv', None),
    ('length', None),          # learned position table
    ('relpos_buckets', None),
    ('layers', None),          # the stacked axis of scanned layers
    # activations
    ('activation_batch', ('data', 'fsdp')),
    ('activation_length', None),
    ('activation_embed', None),
    ('activation_mlp', 'tensor'),
    ('activation_heads', 'tensor'),
    ('activation_kv_heads', 'tensor'),
    ('activation_kv', None),
    ('activation_vocab', 'tensor'),
)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MeshConfig:
  data: int = -1
  fsdp: int = 1
  tensor: int = 1
  dcn_data: int = 1  # number of slices (multi-slice TPU); multiplies the 'data' axis

  def ici_shape(self, num_devices: int) -> tuple[int, int, int]:
    per_slice = num_devices // self.dcn_data
    if per_slice * self.dcn_data != num_devices:
      raise ValueError(f'MeshConfig.dcn_data={self.dcn_data} does not divide {num_devices} devices')
    sizes = [self.data, self.fsdp, self.tensor]
    if sizes.count(-1) > 1:
      raise ValueError(f'MeshConfig: at most one of data/fsdp/tensor may be -1, got {sizes}')
    if -1 in sizes:
      known = math.prod(s for s in sizes if s != -1)
      if per_slice % known:
        raise ValueError(f'MeshConfig {dict(zip(MESH_AXES, sizes))} does not divide the '
                         f'{per_slice} devices per slice')
      sizes[sizes.index(-1)] = per_slice // known
    if math.prod(sizes) != per_slice:
      raise ValueError(f'MeshConfig {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices '
                       f'per slice; there are {per_slice}')
    return tuple(sizes)


def make_mesh(config: MeshConfig, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  devices = list(devices if devices is not None else jax.devices())
  ici = config.ici_shape(len(devices))
  if config.dcn_data > 1:
    dev_array = mesh_utils.create_hybrid_device_mesh(ici, (config.dcn_data, 1, 1), devices)
  else:
    try:
      dev_array = mesh_utils.create_device_mesh(ici, devices)
    except (NotImplementedError, ValueError, AssertionError):
      # Topology-aware placement only knows TPU/GPU layouts; plain order is fine elsewhere.
      dev_array = np.asarray(devices).reshape(ici)
  # Auto axes: sharding is propagated by GSPMD from the constraints we give (ENVIRONMENT.md: the
  # default Explicit axes reject embedding lookups without out_sharding).
  return Mesh(dev_array, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def logical_to_sharding(logical_specs, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
  """PartitionSpecs of logical names (as from nn.get_partition_spec) -> NamedShardings."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, list(rules))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(('data', 'fsdp')))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def check_divisible(abstract_tree, shardings, what: str = 'parameter') -> None:
  """Raise a one-line error naming the first array whose dims don't divide over their mesh axes.

  jit refuses uneven shardings only after tracing; this says which parameter and which config to change.
  """
  flat_a = jax.tree_util.tree_flatten_with_path(abstract_tree)[0]
  flat_s = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
  for (path, a), s in zip(flat_a, flat_s):
    for dim, axes in zip(a.shape, s.spec):
      if axes is None:
        continue
      axes = (axes,) if isinstance(axes, str) else axes
      n = math.prod(s.mesh.shape[ax] for ax in axes)
      if dim % n:
        name = jax.tree_util.keystr(path)
        raise ValueError(f'{what} {name} of shape {a.shape}: dimension {dim} is not divisible by mesh '
                         f'axes {axes} of size {n}; change the model size or MeshConfig')


def unbox(tree):
  """Strips flax's LogicallyPartitioned boxes (also from abstract ShapeDtypeStruct trees)."""
  return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if isinstance(x, nn.Partitioned) else x,
                      tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def with_sharding(abstract_tree, shardings):
  """Attach shardings to ShapeDtypeStructs (the target of a sharded restore or of jit out_shardings)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree,
                      shardings)


def processes_differing_from_first(*values: str) -> list[list[int]]:
  """For each value, the processes whose own differs from process 0's: one collective for all of
  them when there are several processes (a digest of each value is gathered), and every process gets
  the same answer."""
  if jax.process_count() == 1:
    return [[] for _ in values]
  digests = np.stack([np.frombuffer(hashlib.sha256(v.encode()).digest()[:8], np.int32)
                      for v in values])
  every = np.asarray(multihost_utils.process_allgather(digests)).reshape(
      jax.process_count(), len(values), -1)
  return [[p for p in range(len(every)) if not np.array_equal(every[p, i], every[0, i])]
          for i in range(len(values))]


def all_processes_have(flag: bool) -> bool:
  """Whether `flag` holds on every process of the job (a collective when there are several): what
  each process decides from its own view (a batch left, a checkpoint read, a lock taken) is decided
  the same way everywhere, so that none is left waiting for the others in a collective."""
  return on_every_process(flag)[0]


def on_every_process(*flags: bool) -> list[bool]:
  """For each flag, whether it holds on every process: all_processes_have for several flags, in one
  collective."""
  if jax.process_count() == 1:
    return [bool(f) for f in flags]
  every = np.asarray(multihost_utils.process_allgather(np.asarray(flags, bool)))
  return [bool(v) for v in np.all(every.reshape(jax.process_count(), len(flags)), axis=0)]
