"""Will this run fit the target, and how fast should it go? Compiled by XLA for the target, on a CPU.

    python -m launch preflight --topology v5p-256 \
        --gin_file=gin_configs/models/llama_8b.gin ... [--gin.NAME=VALUE ...] [--mfu 0.5] [--search]

TPU targets: libtpu describes the target's devices (`jax.experimental.topologies`, no TPU needed), the
run's mesh is built over them with `partitioning.make_mesh`, and the trainer's real train step
(`trainer.CompiledSteps`, the run's shardings, batch shapes from `t5x_like.batch_shapes`) is compiled
ahead of time for them, as MaxText's train_compile does. Memory and FLOPs are XLA's for the target.
GPU targets (`8xh100`, `2x8xh200`): where jax's CUDA plugin is installed (`pip install
"jax[cuda13]==<jax version>"`; no GPU or driver needed, e.g. a login node), XLA's GPU compiler compiles
the step for the target's GPUs without having them (`targets.gpu_devices`, in a subprocess), cuDNN
attention included, and the memory is XLA's. Without the plugin the step is compiled over as many fake
CPU devices to validate the sharding, and memory is an analytical estimate. The report labels which.

Refuses with one line (`error: ...`, exit 2): unknown topology, a mesh or batch that does not divide,
memory over HBM (by how much, and what to change).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import re
import subprocess
import sys
import time
from typing import Any, Optional, Sequence

import gin
import jax
import numpy as np

from launch import targets as targets_lib
from t5x_like import batch_shapes
from t5x_like import compilation_cache
from t5x_like.data import DataConfig
from t5x_like import exit_codes
from t5x_like import losses
from t5x_like import optimizers
from t5x_like import partitioning
from t5x_like import storage_space
from t5x_like import train as train_lib
from t5x_like import trainer as trainer_lib
from t5x_like.models import build_model

GiB = 1024 ** 3
SEARCH_REMAT = ('none', 'dots_with_no_batch_dims', 'dots', 'full')
# --search takes only what uses at most this fraction of the memory (fragmentation, the runtime's own
# buffers: what a compiled program's size does not show).
SEARCH_HEADROOM = 0.9
# Differs from 'dots_with_no_batch_dims' only where attention is the cuDNN kernel.
SEARCH_REMAT_GPU = ('dots_and_fused_attention',)
# Placeholders for the macros a run sets on its command line; the preflight writes nothing.
_DEFAULT_MACROS = {'MODEL_DIR': "'/nonexistent/preflight'", 'TRAIN_STEPS': '10000'}


class Refusal(ValueError):
  """The run cannot go on this target; the message is the one line the user sees."""


@dataclasses.dataclass(frozen=True)
class RunSpec:
  model: Any
  batch_size: int
  feature_lengths: dict
  pack: bool
  optimizer: optimizers.OptimizerConfig
  loss: losses.LossConfig
  mesh: partitioning.MeshConfig
  trainer: trainer_lib.TrainerConfig
  train_steps: int


def _build(param: str, default=None):
  """Calls the configurable that `train.<param>` references, in its gin scope."""
  try:
    ref = gin.query_parameter(f'train.{param}')
  except ValueError:
    return default
  if not isinstance(ref, gin.config.ConfigurableReference):
    return ref
  scope = ref.scoped_selector.rpartition('/')[0]
  with gin.config_scope(scope or None):
    return ref.configurable.wrapper()


def load_run(gin_files: Sequence[str], bindings: Sequence[str], search_paths=()) -> RunSpec:
  """The run's configs from its gin files, without calling any task builder (no data is read, and
  the seqio tasks are left unread: no TensorFlow needed)."""
  set_macros = {b.split('=', 1)[0].strip() for b in bindings}
  defaults = [f'{k} = {v}' for k, v in _DEFAULT_MACROS.items() if k not in set_macros]
  # (After the user's bindings, so that gin's "In bindings string line N" counts only theirs.)
  train_lib.parse_gin_importing_tasks_if_named(gin_files, list(bindings) + defaults, search_paths,
                                               skip_tasks=True)
  try:
    ref = gin.query_parameter('train.train_data')
  except ValueError as e:
    raise Refusal('gin: train.train_data is not bound') from e
  scope = ref.scoped_selector.rpartition('/')[0]
  # The data is never read: a name stands in for the task builder, and an export is unset (DataConfig
  # takes exactly one of them), so only shapes remain.
  for selector in {'DataConfig', ref.scoped_selector}:
    gin.bind_parameter(f'{selector}.mixture_or_task', 'preflight')
    gin.bind_parameter(f'{selector}.export_dir', None)
  with gin.config_scope(scope or None):
    data = DataConfig()
  run = RunSpec(
      model=_build('model'), batch_size=data.batch_size,
      feature_lengths=dict(data.task_feature_lengths), pack=data.pack,
      optimizer=_build('optimizer', optimizers.OptimizerConfig()),
      loss=_build('loss', losses.LossConfig()), mesh=_build('mesh', partitioning.MeshConfig()),
      trainer=_build('trainer', trainer_lib.TrainerConfig()),
      train_steps=int(_build('train_steps')))
  try:  # what the trainer would refuse at its start, refused before any job is submitted
    run.trainer.check_run(run.train_steps, run.batch_size)
  except ValueError as e:
    raise Refusal(str(e)) from e
  return run


def _with_sharding(abstract: dict, sharding) -> dict:
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding) for k, v in abstract.items()}


def _shard_bytes(abstract_tree, shardings) -> int:
  leaves = jax.tree.leaves(abstract_tree)
  shs = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
  return int(sum(np.prod(s.shard_shape(a.shape)) * np.dtype(a.dtype).itemsize
                 for a, s in zip(leaves, shs)))


def _hbm_overflow(msg: str) -> Optional[tuple[float, float]]:
  """(used, capacity) bytes from XLA's TPU out-of-memory compile error, if that is what it is."""
  m = (re.search(r'Used ([\d.]+)([KMGT]?) of ([\d.]+)([KMGT]?) hbm', msg)
       or re.search(r'required for [\w ]+\(([\d.]+)([KMGT]?)\) exceeds available HBM '
                    r'\(([\d.]+)([KMGT]?)\)', msg))
  if not m:
    return None
  unit = {'': 1, 'K': 2 ** 10, 'M': 2 ** 20, 'G': 2 ** 30, 'T': 2 ** 40}
  return float(m.group(1)) * unit[m.group(2)], float(m.group(3)) * unit[m.group(4)]


def _advice(run: RunSpec) -> str:
  tips = []
  if run.model.remat_policy != 'full':
    tips.append(f"{type(run.model).__name__}.remat_policy='full'")
  tips.append(f'a larger MeshConfig.fsdp (now {run.mesh.fsdp})')
  tips.append(f'a smaller batch (now {run.batch_size}) or TrainerConfig.num_microbatches')
  return 'try ' + ', '.join(tips)


def compile_step(run: RunSpec, devices, count_flops: bool = True) -> dict:
  """AOT-compiles the trainer's train step for `devices` with the run's mesh, shardings and batch."""
  try:
    mesh = partitioning.make_mesh(run.mesh, devices)
  except ValueError as e:
    raise Refusal(f'mesh does not divide: {e}') from e
  dp = mesh.shape['data'] * mesh.shape['fsdp']
  if run.batch_size % dp:
    raise Refusal(f'batch {run.batch_size} does not divide over the {dp} data-parallel devices '
                  f'(mesh {dict(mesh.shape)}); make BATCH_SIZE a multiple of {dp}')
  if run.trainer.num_microbatches > 1 and (run.batch_size // run.trainer.num_microbatches) % dp:
    raise Refusal(f'microbatch {run.batch_size // run.trainer.num_microbatches} does not divide over '
                  f'the {dp} data-parallel devices')
  model = build_model(run.model)
  family = run.model.family
  batch = batch_shapes.abstract_batch(family, run.feature_lengths, run.batch_size, run.pack)
  tx = optimizers.make_optimizer(run.optimizer, run.train_steps)
  schedule = optimizers.make_schedule(run.optimizer, run.train_steps)
  try:
    abstract_state, shardings = trainer_lib.state_shardings(model, tx, batch, mesh)
  except ValueError as e:
    raise Refusal(f'mesh does not divide: {e}') from e
  steps = trainer_lib.CompiledSteps(model, tx, schedule, run.loss, mesh, shardings,
                                    run.trainer.num_microbatches)
  rep = partitioning.replicated(mesh)
  key = jax.eval_shape(lambda: jax.random.key(0))
  t0 = time.perf_counter()
  try:
    with compilation_cache.disabled():
      steps.compile_train(partitioning.with_sharding(abstract_state, shardings),
                          _with_sharding(batch, partitioning.batch_sharding(mesh)),
                          jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=rep))
  except Exception as e:  # XLA's TPU compiler refuses a program over HBM: say it in one line
    over = _hbm_overflow(str(e))
    if over is None:
      raise
    return {'oom': over, 'mesh': dict(mesh.shape), 'compile_s': time.perf_counter() - t0}
  compiled = steps.compiled_train
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}  # None from the GPU compiler
  state_bytes = _shard_bytes(abstract_state, shardings)
  params_bytes = _shard_bytes(abstract_state['params'], shardings['params'])
  total = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
           + mem.temp_size_in_bytes + mem.generated_code_size_in_bytes)
  target_len = batch['decoder_target_tokens'].shape[1]
  xla_flops = float(cost.get('flops', float('nan'))) * len(devices)
  if getattr(run.model, 'scan_layers', False):
    xla_flops = float('nan') if not count_flops else _unrolled_flops(run, tx, schedule, batch)
  return {
      'compile_s': time.perf_counter() - t0, 'mesh': dict(mesh.shape),
      'num_devices': len(devices), 'device_kind': devices[0].device_kind,
      'num_params': int(sum(np.prod(a.shape) for a in jax.tree.leaves(abstract_state['params']))),
      'state_bytes': state_bytes, 'params_bytes': params_bytes,
      'checkpoint_bytes': storage_space.state_bytes(abstract_state),
      'argument_bytes': mem.argument_size_in_bytes, 'temp_bytes': mem.temp_size_in_bytes,
      'total_bytes': total, 'xla_flops': xla_flops,
      'tokens_per_step': run.batch_size * target_len,
      'formula_flops_per_step': run.model.flops_per_token(target_len) * run.batch_size * target_len,
      'batch': {k: list(v.shape) for k, v in batch.items()},
  }


def _unrolled_flops(run: RunSpec, tx, schedule, batch) -> float:
  """XLA's FLOPs of the whole step (all devices). Its cost analysis counts a scanned layer stack's loop
  body once, so the same step with unrolled layers is lowered, unsharded and not compiled, and XLA's
  HLO cost analysis reads it (for the host backend: the TPU one analyses only compiled programs).
  The microbatch loop is a scan too: the whole batch is counted as one (the same matmuls; only the
  gradient sums differ)."""
  # XLA's attention for the host backend: the same FLOPs as the cuDNN kernel, which it cannot lower.
  model = build_model(dataclasses.replace(run.model, scan_layers=False, attention_impl=None))
  abstract = jax.eval_shape(functools.partial(trainer_lib.init_fn, model, tx, batch),
                            jax.random.key(0))
  step = jax.jit(functools.partial(trainer_lib.train_step, model=model, tx=tx, schedule=schedule,
                                   loss_cfg=run.loss, num_microbatches=1))
  cost = step.lower(partitioning.unbox(abstract), batch, jax.eval_shape(lambda: jax.random.key(0))
                    ).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get('flops', float('nan'))) if cost else float('nan')


def activation_estimate(run: RunSpec, dp: int) -> float:
  """Analytical activation bytes per device for GPU targets (bf16, Korthikanti et al. 2022, without
  the attention-score term that fused attention avoids)."""
  cfg = run.model
  d = cfg.embed_dim
  layers = getattr(cfg, 'num_layers', None) or (cfg.num_encoder_layers + cfg.num_decoder_layers)
  tokens = run.batch_size * sum(run.feature_lengths.values()) / dp
  # Bytes per token and model dimension; keeping the fused attention's output adds its bf16 copy.
  per_layer = {'none': 34, 'dots': 16, 'dots_with_no_batch_dims': 16, 'dots_and_fused_attention': 18,
               'full': 2}[cfg.remat_policy]
  logits = tokens * cfg.vocab_size * 4 * 2  # fp32 logits and their gradient
  return tokens * d * per_layer * layers + logits


def _count(n: float) -> str:
  return f'{n / 1e9:.2f}B' if n >= 1e9 else f'{n / 1e6:.2f}M'


def _fmt_gib(b: float) -> str:
  return f'{b / GiB:.2f} GiB'


def _capacity(target: targets_lib.Target, gpu_mem_fraction: float) -> float:
  """Bytes a run may use per device: the HBM (TPU), JAX's memory pool (GPU)."""
  return target.hbm_bytes * (gpu_mem_fraction if target.kind == 'gpu' else 1.)


def _report_lines(run: RunSpec, target: targets_lib.Target, r: dict, mfu: float,
                  estimated: bool, gpu_mem_fraction: float = targets_lib.JAX_GPU_MEM_FRACTION
                  ) -> tuple[list[str], Optional[str], float]:
  """The printed report, the refusal line when it does not fit, and the bytes per device. estimated: the step was compiled
  over CPU devices for a GPU target (memory from activation_estimate). On a GPU the run has
  gpu_mem_fraction of the memory (JAX's pool), not all of it."""
  gpu = target.kind == 'gpu'
  capacity = _capacity(target, gpu_mem_fraction)
  of = (f'{_fmt_gib(capacity)} ({gpu_mem_fraction:.0%} of {_fmt_gib(target.hbm_bytes)}: JAX\'s GPU '
        'memory pool)' if gpu else f'{_fmt_gib(capacity)} HBM')
  label = ('compiled for CPU devices (sharding check only)' if estimated else
           f'compiled by XLA for {target.device_kind}'
           + (' without a GPU (deviceless; no autotuning)' if gpu else ''))
  chips = target.num_chips
  step_s = r['formula_flops_per_step'] / (chips * target.peak_flops * mfu)
  lines = [
      f'target: {target.name} = {chips} {target.device_kind} chips in {target.num_slices} '
      f"{'node(s)' if gpu else 'slice(s)'}, {_fmt_gib(target.hbm_bytes)} HBM each",
      f"model: {run.model.family}, {_count(r['num_params'])} parameters | batch "
      f"{run.batch_size} x {run.feature_lengths} ({r['tokens_per_step']} tokens/step)",
      f"mesh: {r['mesh']} over {r['num_devices']} devices (dcn_data={run.mesh.dcn_data})",
      f"compile: {r['compile_s']:.1f}s ({label})",
  ]
  problem = None
  if estimated:
    dp = r['mesh']['data'] * r['mesh']['fsdp']
    act = activation_estimate(run, dp)
    est = r['state_bytes'] + r['params_bytes'] + act  # state + fp32 gradients + activations
    lines += [
        f"memory per device (estimated): parameters + optimizer state {_fmt_gib(r['state_bytes'])} "
        f"(exact, from the shardings), gradients {_fmt_gib(r['params_bytes'])}, activations "
        f"{_fmt_gib(act)} (remat_policy={run.model.remat_policy!r}); total {_fmt_gib(est)} of "
        f'{of}',
        f"FLOPs per step (6N + attention formula): {r['formula_flops_per_step']:.3e}",
    ]
    total = est
  else:
    total = r['total_bytes']
    xla = (f"XLA {r['xla_flops']:.3e} (all devices) vs " if np.isfinite(r['xla_flops']) else '')
    lines += [
        f"memory per device (compiled): parameters + optimizer state {_fmt_gib(r['state_bytes'])}, "
        f"temporaries {_fmt_gib(r['temp_bytes'])}, total {_fmt_gib(total)} of "
        f'{of} ({100 * total / capacity:.0f}%)',
        f"FLOPs per step: {xla}6N + attention {r['formula_flops_per_step']:.3e}"
        + (f" (ratio {r['xla_flops'] / r['formula_flops_per_step']:.2f}; XLA counts remat "
           f"recomputation: {mfu:.0%} MFU is {mfu * r['xla_flops'] / r['formula_flops_per_step']:.0%}"
           ' of peak in XLA\'s FLOPs)' if xla else ''),
    ]
  keep = run.trainer.keep_checkpoints
  lines.append(f"checkpoint: about {storage_space.human(r['checkpoint_bytes'])} a save (parameters "
               'and optimizer state, before compression)' +
               (f'; keeping {keep} needs about {storage_space.human((keep + 1) * r["checkpoint_bytes"])}'
                ' where MODEL_DIR is (the oldest goes after the newest is written)' if keep else ''))
  lines.append(f'expected step time at {mfu:.0%} MFU: {step_s * 1e3:.4g} ms; '
               f"{_count(r['tokens_per_step'] / step_s * 86400)} tokens/day "
               f'(peak {target.peak_flops / 1e12:.0f} TFLOP/s per chip)')
  if total > SEARCH_HEADROOM * capacity and total <= capacity:
    lines.append(f'WARNING: {100 * total / capacity:.0f}% of the memory leaves little room for '
                 'fragmentation and the runtime\'s own buffers')
  if total > capacity:
    pool = (f' (JAX\'s pool, {gpu_mem_fraction:.0%} of its {_fmt_gib(target.hbm_bytes)}: raise it '
            f'with --env XLA_PYTHON_CLIENT_MEM_FRACTION=F in the launch and --gpu_mem_fraction F '
            'here, leaving room for NCCL and cuDNN)' if gpu else '')
    problem = (f'does not fit: {_fmt_gib(total)} per device is {_fmt_gib(total - capacity)} '
               f'over the {_fmt_gib(capacity)}{"" if gpu else " HBM"} of {target.device_kind}'
               f'{pool}; {_advice(run)}')
  return lines, problem, total


def _gpu_compile(train_args: Sequence[str], target: targets_lib.Target, overrides: Sequence[str],
                 model_configurable: str) -> dict:
  """compile_step's result for a GPU target, from a subprocess (jax's platform and device count are
  fixed at its import): deviceless for the target's GPUs where jax's CUDA plugin is installed
  (r['estimated'] False), else over as many fake CPU devices with XLA's attention (True)."""
  if targets_lib.cuda_plugin_installed():
    env = dict(os.environ, **targets_lib.DEVICELESS_GPU_ENV)
    cmd = ['--_gpu_compile', target.name]
  else:
    env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={target.num_chips}',
               JAX_PLATFORMS='cpu')
    # The fused cuDNN kernel does not exist on CPU; XLA's attention has the same shapes.
    cmd = ['--_cpu_compile']
    overrides = (*overrides, f'--gin.{model_configurable}.attention_impl=None')
  proc = subprocess.run([sys.executable, '-m', 'launch.preflight', *cmd, *train_args, *overrides],
                        env=env, capture_output=True, text=True)
  out = proc.stdout.strip().splitlines()
  if proc.returncode or not out:
    err = [l for l in proc.stderr.splitlines() if l.startswith('error: ')]
    raise Refusal(err[-1][len('error: '):] if err else
                  f'compile for {target.name} failed: {proc.stderr.strip()[-500:]}')
  return {**json.loads(out[-1]), 'estimated': cmd[0] == '--_cpu_compile'}


def load_train_args(train_args: Sequence[str]) -> RunSpec:
  """load_run from the train command's arguments (gin files, --gin.* and --gin_bindings)."""
  bindings, rest = train_lib.split_gin_flags(train_args)
  args, unknown = train_lib.make_parser().parse_known_args(rest)
  if unknown:
    raise Refusal(f'unexpected arguments for the train command: {unknown}')
  gin_files, bindings = args.gin_file, args.gin_bindings + bindings
  if not gin_files:
    raise Refusal('no --gin_file given')
  return load_run(gin_files, bindings, args.gin_search_paths)


def preflight(train_args: Sequence[str], topology: str, mfu: float = 0.5, search: bool = False,
              print_fn=print, gpu_mem_fraction: Optional[float] = None) -> dict:
  """Runs the preflight; returns the result dict (with 'lines'). Raises Refusal when it won't go.
  gpu_mem_fraction: of each GPU's memory, what the run's JAX will use (None: as this environment's
  XLA_PYTHON_CLIENT_MEM_FRACTION says, else JAX's default 0.75)."""
  target = targets_lib.parse(topology)
  if gpu_mem_fraction is None:
    gpu_mem_fraction = targets_lib.gpu_mem_fraction()
  elif not 0 < gpu_mem_fraction <= 1:
    raise Refusal(f'--gpu_mem_fraction={gpu_mem_fraction}: expected a fraction in (0, 1]')
  run = load_train_args(train_args)
  if target.kind == 'tpu' and run.mesh.dcn_data != target.num_slices:
    raise Refusal(f'{target.name} has {target.num_slices} slice(s) but MeshConfig.dcn_data='
                  f'{run.mesh.dcn_data}; add --gin.MeshConfig.dcn_data={target.num_slices}')
  candidates = [(run.model.remat_policy, run.batch_size, ())]
  if search:
    dp_guess = target.num_chips // max(run.mesh.tensor, 1)
    per_device = sorted({max(1, run.batch_size // dp_guess) * f for f in (1, 2, 4)} | {1})
    candidates = [(p, b * dp_guess, (f"--gin.{type(run.model).__name__}.remat_policy='{p}'",
                                      f'--gin.train/DataConfig.batch_size={b * dp_guess}'))
                  for p in SEARCH_REMAT + (SEARCH_REMAT_GPU if target.kind == 'gpu' else ())
                  for b in per_device]
  results = []
  for policy, batch, overrides in candidates:
    cand = dataclasses.replace(run, model=dataclasses.replace(run.model, remat_policy=policy),
                               batch_size=batch)
    if target.kind == 'tpu':
      devices = targets_lib.tpu_devices(target)
      r = compile_step(cand, devices)
    else:
      r = _gpu_compile(train_args, target, overrides, type(run.model).__name__)
    if 'oom' in r:
      used, cap = r['oom']
      line = (f'does not fit: XLA needs {_fmt_gib(used)} per device, {_fmt_gib(used - cap)} over the '
              f'{_fmt_gib(cap)} HBM of {target.device_kind}; {_advice(cand)}')
      results.append({'policy': policy, 'batch': batch, 'problem': line, 'lines': [line]})
      continue
    lines, problem, total = _report_lines(cand, target, r, mfu, r.get('estimated', False),
                                          gpu_mem_fraction)
    r.update(policy=policy, batch=batch, lines=lines, problem=problem,
             used=total / _capacity(target, gpu_mem_fraction),
             step_s=r['formula_flops_per_step'] / (target.num_chips * target.peak_flops * mfu))
    results.append(r)
    # For the search: XLA's FLOPs include remat's recomputation, so at the same hardware utilisation a
    # policy that recomputes more is slower. (Utilisation itself is not modelled: a larger per-device
    # batch usually raises it, so ties go to the larger batch.)
    r['hw_tokens_per_s'] = (r['tokens_per_step'] * target.num_chips * target.peak_flops * mfu
                            / r['xla_flops']) if np.isfinite(r['xla_flops']) else float('nan')
    if search:
      print_fn(f"  remat_policy={policy!r} batch {batch}: "
               + (problem or f"{_fmt_gib(total)} per device ({r['used']:.0%}), XLA "
                  f"{r['xla_flops']:.3e} FLOPs/step, {r['hw_tokens_per_s']:.4g} tokens/s at "
                  f'{mfu:.0%} of peak'))
  if search:
    fits = [r for r in results if not r['problem'] and r['used'] <= SEARCH_HEADROOM]
    if not fits:
      raise Refusal(f'no remat policy x batch fits {target.name} within {SEARCH_HEADROOM:.0%} of its '
                    'memory: ' + (results[-1]['problem'] or f"{results[-1]['used']:.0%} used"))
    best = max(fits, key=lambda r: (np.nan_to_num(r['hw_tokens_per_s']), r['batch']))
    print_fn(f"fastest that fits in {SEARCH_HEADROOM:.0%} of the memory: "
             f"remat_policy={best['policy']!r}, batch {best['batch']}")
    for line in best['lines']:
      print_fn(line)
    return best
  r = results[0]
  for line in r['lines']:
    print_fn(line)
  if r['problem']:
    raise Refusal(r['problem'])
  return r


def make_parser(prog: str = 'python -m launch preflight') -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=prog, description=__doc__.split('\n')[0])
  p.add_argument('--topology', required=True,
                 help='v4-8..., v5p-256, 2xv5p-256, v5e-16/v5litepod-16, v6e-64, 8xh100, 2x8xh200')
  p.add_argument('--mfu', type=float, default=0.5, help='MFU assumed for the expected step time')
  p.add_argument('--gpu_mem_fraction', type=float, default=None,
                 help='GPU targets: the fraction of each GPU\'s memory the run\'s JAX takes (as its '
                 'XLA_PYTHON_CLIENT_MEM_FRACTION; default: this environment\'s, else 0.75)')
  p.add_argument('--search', action='store_true',
                 help='try remat policies x per-device batch sizes; print the fastest that fits')
  return p


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv[:1] in (['--_cpu_compile'], ['--_gpu_compile']):  # _gpu_compile's subprocess
    gpu_target = argv[1] if argv[0] == '--_gpu_compile' else None
    try:
      bindings, rest = train_lib.split_gin_flags(argv[2:] if gpu_target else argv[1:])
      args = train_lib.make_parser().parse_args(rest)
      run = load_run(args.gin_file, args.gin_bindings + bindings, args.gin_search_paths)
      devices = (targets_lib.gpu_devices(targets_lib.parse(gpu_target)) if gpu_target else
                 jax.devices())
      r = compile_step(run, devices)
    except (Refusal, ValueError, TypeError, OSError) as e:
      print(f'error: {train_lib._one_line(e)}', file=sys.stderr)
      return exit_codes.CONFIG_ERROR
    print(json.dumps({k: v for k, v in r.items()}))
    return 0
  # Everything that is not the preflight's own option is the train command's (as after `--`).
  args, train_args = make_parser().parse_known_args([a for a in argv if a != '--'])
  try:
    preflight(train_args, args.topology, args.mfu, args.search,
              gpu_mem_fraction=args.gpu_mem_fraction)
  except (Refusal, ValueError, TypeError, OSError) as e:
    if '--traceback' in train_args:
      raise
    print(f'error: {train_lib._one_line(e)}', file=sys.stderr)
    return exit_codes.CONFIG_ERROR
  return 0


if __name__ == '__main__':
  sys.stdout.reconfigure(line_buffering=True)  # (to a log file too, each line as printed)
  sys.exit(main())
