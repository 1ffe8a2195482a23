"""What a launch or preflight target is: a TPU slice type (`v5p-256`, `2xv5p-256`, `v6e-16`, ...) or a
GPU node set (`8xh100`, `2x8xh200`), with its chip count, HBM and peak bf16 FLOP/s.

TPU names count cores for v4/v5p (one megacore device per chip: v5p-256 = 128 chips) and chips for
v5e/v5litepod/v6e. `NxTYPE` is N slices joined over DCN (multi-slice).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import re

from jax.experimental import topologies

GiB = 1024 ** 3

# generation: (chip_config_name, cores per chip, HBM bytes per chip, dense bf16 FLOP/s per chip,
#              GKE accelerator label, device kind)
_TPU = {
    'v4': ('megacore', 2, 32 * GiB, 275e12, 'tpu-v4-podslice', 'TPU v4'),
    'v5p': ('megacore', 2, 95 * GiB, 459e12, 'tpu-v5p-slice', 'TPU v5p'),
    'v5e': ('default', 1, 16 * GiB, 197e12, 'tpu-v5-lite-podslice', 'TPU v5 lite'),
    'v6e': ('default', 1, 32 * GiB, 918e12, 'tpu-v6e-slice', 'TPU v6 lite'),
}
_TPU_ALIASES = {'v5litepod': 'v5e', 'v5lite': 'v5e'}
# Chips per slice -> the standard ICI topology Cloud TPU creates for it.
_TOPO_3D = {4: '2x2x1', 8: '2x2x2', 16: '2x2x4', 32: '2x4x4', 64: '4x4x4', 128: '4x4x8',
            256: '4x8x8', 512: '8x8x8', 1024: '8x8x16', 2048: '8x16x16', 4096: '16x16x16'}
_TOPO_2D = {1: '1x1', 4: '2x2', 8: '2x4', 16: '4x4', 32: '4x8', 64: '8x8', 128: '8x16',
            256: '16x16'}
_GPU = {'h100': (989e12, 'NVIDIA H100 80GB HBM3', 'nvidia-h100-80gb'),
        'h200': (989e12, 'NVIDIA H200', 'nvidia-h200-141gb'),
        'a100': (312e12, 'NVIDIA A100-SXM4-80GB', 'nvidia-a100-80gb')}
# JAX's GPU client preallocates this fraction of a GPU's memory as its pool at start, and a program
# that needs more fails then, whatever the GPU has (jax 0.10-0.11; XLA_CLIENT_MEM_FRACTION, formerly
# XLA_PYTHON_CLIENT_MEM_FRACTION, changes it).
JAX_GPU_MEM_FRACTION = 0.75
GPU_MEM_FRACTION_VARS = ('XLA_CLIENT_MEM_FRACTION', 'XLA_PYTHON_CLIENT_MEM_FRACTION')


# What XLA's GPU compiler must be told of a GPU it cannot see (deviceless compilation): SMs, clock,
# memory bandwidth and size (nvidia-smi's total), compute capability, of the SXM parts.
_GPU_DESCRIPTION = {
    'h100': dict(cores=132, clock_ghz=1.98, bandwidth=3.35e12, memory=81559 * 2 ** 20, cc=9),
    'h200': dict(cores=132, clock_ghz=1.98, bandwidth=4.8e12, memory=143771 * 2 ** 20, cc=9),
    'a100': dict(cores=108, clock_ghz=1.41, bandwidth=2.04e12, memory=81920 * 2 ** 20, cc=8),
}
# Set before jax is imported, in a process that compiles for GPUs it cannot see: no CUDA backend is
# started (there is no driver) and the CUDA plugin skips its driver/library version check.
DEVICELESS_GPU_ENV = {'JAX_PLATFORMS': 'cpu', 'JAX_SKIP_CUDA_CONSTRAINTS_CHECK': '1'}


@dataclasses.dataclass(frozen=True)
class Target:
  name: str                 # as the user wrote it
  kind: str                 # 'tpu' | 'gpu'
  generation: str           # v4 | v5p | v5e | v6e | h100 | h200 | a100
  num_slices: int           # TPU slices (DCN) or GPU nodes
  chips_per_slice: int      # chips of one slice, or GPUs of one node
  hbm_bytes: float          # per chip
  peak_flops: float         # dense bf16 per chip
  device_kind: str
  accelerator_type: str = ''  # TPU: the gcloud --accelerator-type of one slice (v5p-256)
  topology: str = ''          # TPU: ICI topology of one slice (4x4x8)
  chip_config: str = ''
  gke_accelerator: str = ''

  @property
  def num_chips(self) -> int:
    return self.num_slices * self.chips_per_slice

  @property
  def hosts_per_slice(self) -> int:
    """TPU VMs (4 chips each; v5e/v6e slices of up to 8 chips are one host) or GPU nodes (1)."""
    if self.kind == 'gpu':
      return 1
    if self.generation in ('v5e', 'v6e') and self.chips_per_slice <= 8:
      return 1
    return max(1, self.chips_per_slice // 4)

  @property
  def chips_per_host(self) -> int:
    return self.chips_per_slice // self.hosts_per_slice


def parse(name: str) -> Target:
  """'v5p-256', '2xv5p-256', 'v6e-16', 'v5litepod-32', '8xh100', '2x8xh200' -> Target, or a one-line
  ValueError that names the accepted forms."""
  s = name.strip().lower()
  m = re.fullmatch(r'(?:(\d+)x)?(\d+)x(h100|h200|a100)', s)
  if m:
    nodes, gpus, gen = int(m.group(1) or 1), int(m.group(2)), m.group(3)
    peak, kind, label = _GPU[gen]
    return Target(name, 'gpu', gen, nodes, gpus, _GPU_DESCRIPTION[gen]['memory'], peak, kind,
                  gke_accelerator=label)
  m = re.fullmatch(r'(?:(\d+)x)?(v4|v5p|v5e|v5litepod|v5lite|v6e)-(\d+)', s)
  if not m:
    raise ValueError(f'unknown topology {name!r}: use a TPU type (v4-8, v5p-256, v5e-16, '
                     'v5litepod-16, v6e-64; 2xv5p-256 for 2 slices) or GPUs (8xh100, 2x8xh200)')
  slices, gen, n = int(m.group(1) or 1), _TPU_ALIASES.get(m.group(2), m.group(2)), int(m.group(3))
  chip_config, cores, hbm, peak, label, kind = _TPU[gen]
  chips, rem = divmod(n, cores)
  table = _TOPO_3D if cores == 2 else _TOPO_2D
  if rem or chips not in table:
    raise ValueError(f'unknown topology {name!r}: {gen} slices are {gen}-'
                     + '/'.join(str(c * cores) for c in sorted(table)))
  prefix = 'v5litepod' if gen == 'v5e' else gen
  return Target(name, 'tpu', gen, slices, chips, hbm, peak, kind,
                accelerator_type=f'{prefix}-{n}', topology=table[chips], chip_config=chip_config,
                gke_accelerator=label)


def tpu_devices(target: Target):
  """The target's devices from libtpu's topology description: no TPU needed (the `tpu` extra)."""
  try:
    import libtpu  # noqa: F401
  except ImportError as e:
    raise RuntimeError('the TPU preflight needs libtpu: pip install -e ".[tpu]"') from e
  # No TPU is used: several preflights (and other libtpu users) may share the machine.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  host = (2, 2, 1) if target.chips_per_slice >= 4 else (1, 1, 1)
  desc = topologies.get_topology_desc(
      platform='tpu', topology_name=f'{target.generation}:{target.topology}',
      chip_config_name=target.chip_config, chips_per_host_bounds=host, num_slices=target.num_slices)
  return list(desc.devices)



def gpu_mem_fraction(environ=None) -> float:
  """The fraction of each GPU's memory that JAX will use, as the environment sets it (the job's
  `--env`), else JAX_GPU_MEM_FRACTION."""
  environ = os.environ if environ is None else environ
  for var in GPU_MEM_FRACTION_VARS:
    if environ.get(var):
      try:
        f = float(environ[var])
      except ValueError:
        f = -1.
      if not 0 < f <= 1:
        raise ValueError(f'{var}={environ[var]!r}: expected a fraction in (0, 1]')
      return f
  return JAX_GPU_MEM_FRACTION


def cuda_plugin_installed() -> bool:
  """Whether jax's CUDA plugin can be imported here (what gpu_devices needs; a GPU does not)."""
  if importlib.util.find_spec('jax_plugins') is None:
    return False
  return any(importlib.util.find_spec(f'jax_plugins.xla_cuda{v}') is not None for v in (13, 12))


def gpu_target_config(generation: str) -> str:
  """The GpuTargetConfig (text proto) of one GPU of `generation`, for deviceless compilation."""
  d = _GPU_DESCRIPTION[generation]
  return f"""gpu_device_info {{
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: {233472 if d['cc'] >= 9 else 167936} threads_per_core_limit: 2048
  core_count: {d['cores']} fpus_per_core: {128 if d['cc'] >= 9 else 64}
  block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535
  memory_bandwidth: {int(d['bandwidth'])} l2_cache_size: {50 * 2 ** 20 if d['cc'] >= 9 else 40 * 2 ** 20}
  clock_rate_ghz: {d['clock_ghz']} device_memory_size: {d['memory']}
  shared_memory_per_block_optin: {232448 if d['cc'] >= 9 else 166912}
  cuda_compute_capability {{ major: {d['cc']} }}
  registers_per_core_limit: 65536 registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 10 }}
runtime_version {{ major: 13 }}
device_description_str: "{_GPU[generation][1]}"
"""


def gpu_devices(target: Target):
  """Compile-only devices of the target's GPUs, with no GPU and no driver: XLA's own GPU compiler
  (cuDNN attention, fusions and memory as on the GPU; no autotuning). Needs jax's CUDA plugin
  (`pip install "jax[cuda13]"`) and DEVICELESS_GPU_ENV set before jax was imported."""
  try:
    desc = topologies.get_topology_desc(
        platform='cuda', topology=f'1x{target.num_slices}x{target.chips_per_slice}',
        target_config=gpu_target_config(target.generation))
  except (NotImplementedError, RuntimeError) as e:
    raise RuntimeError(f'compiling for {target.name} without a GPU needs jax\'s CUDA plugin '
                       f'(pip install "jax[cuda13]"): {str(e).splitlines()[0]}') from e
  return list(desc.devices)
