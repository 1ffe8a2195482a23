"""XLA's own accounting of a train step, compiled ahead of time from shapes alone (nothing allocated):
memory_analysis() (temporaries = activations kept for the backward pass + workspace) and
cost_analysis() (FLOPs, bytes accessed), for the speed/memory levers of the GPU suite.

    python benchmarks/step_memory.py --preset gpu_1b --layers 2 --variants default,plain_loss,chunk_512

By default this compiles for the machine's CPU: the temporaries and FLOPs say how the levers scale
(per layer, per token), not what a GPU's fusions will allocate; the cuDNN attention is replaced by
XLA's. `--target 1xh200` (or 1xh100, 8xh100, ...) compiles with XLA's GPU compiler for GPUs this
machine does not have (launch/targets.py: deviceless compilation; needs jax's CUDA plugin, e.g.
`pip install "jax[cuda13]==<jax version>"`, no driver): cuDNN attention, GPU fusions and the memory the
GPU would allocate, without autotuning. `--layers` cuts the model to a few layers so that it compiles
in seconds; scanned layers make the per-layer share linear in the layer count (0: the whole model).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

from launch import targets
from t5x_like import losses, optimizers, partitioning, trainer
from t5x_like.models import DecoderConfig, EncDecConfig, build_model

from records import record_header, write_record
from train_step_throughput import PRESETS, VARIANTS


def analyse(preset: dict, variant: dict, layers: int, devices=None) -> dict:
  """devices: compile-only GPU devices (targets.gpu_devices), or None for this machine's CPU."""
  family = preset.get('family', 'decoder')
  model_kw = {**preset['model'], **variant.get('model', {})}
  if devices is None:
    model_kw.pop('attention_impl', None)  # the cuDNN kernel does not compile for CPU
  if layers:
    keys = ('num_layers',) if family == 'decoder' else ('num_encoder_layers', 'num_decoder_layers')
    model_kw.update({k: layers for k in keys})
  cfg = (DecoderConfig if family == 'decoder' else EncDecConfig)(**model_kw)
  model = build_model(cfg)
  opt = optimizers.OptimizerConfig()
  tx, sched = optimizers.make_optimizer(opt, 1000), optimizers.make_schedule(opt, 1000)
  mesh = partitioning.make_mesh(partitioning.MeshConfig(), devices)
  batch = preset['batch'] * variant.get('batch_scale', 1) * mesh.size
  shapes = {'decoder_input_tokens': (batch, preset['seq']), 'decoder_target_tokens': (batch, preset['seq'])}
  if family == 'encdec':
    shapes['encoder_input_tokens'] = (batch, preset['inputs'])
  if variant.get('segments'):  # packed rows
    shapes.update(decoder_segment_ids=(batch, preset['seq']), decoder_positions=(batch, preset['seq']))
  abstract_batch = {k: jax.ShapeDtypeStruct(v, np.int32) for k, v in shapes.items()}
  abstract_batch['decoder_loss_weights'] = jax.ShapeDtypeStruct((batch, preset['seq']), np.float32)
  abstract, shardings = trainer.state_shardings(model, tx, abstract_batch, mesh)
  steps = trainer.CompiledSteps(model, tx, sched, losses.LossConfig(**variant.get('loss', {})), mesh,
                                shardings, 1)
  bsh = partitioning.batch_sharding(mesh)
  key = jax.eval_shape(lambda: jax.random.key(0))  # no array: the devices may be compile-only
  t0 = time.perf_counter()
  steps.compile_train(partitioning.with_sharding(abstract, shardings),
                      {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=bsh)
                       for k, v in abstract_batch.items()},
                      jax.ShapeDtypeStruct(key.shape, key.dtype,
                                           sharding=partitioning.replicated(mesh)))
  compile_s = time.perf_counter() - t0
  mem = steps._train.memory_analysis()
  cost = steps._train.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}  # None: the GPU compiler's
  return {'model': model_kw, 'loss': variant.get('loss', {}), 'batch': batch, 'seq': preset['seq'],
          'params_M': round(cfg.num_params() / 1e6, 1), 'compile_s': round(compile_s, 1),
          'temp_GiB': round(mem.temp_size_in_bytes / 2 ** 30, 3),
          'argument_GiB': round(mem.argument_size_in_bytes / 2 ** 30, 3),
          'output_GiB': round(mem.output_size_in_bytes / 2 ** 30, 3),
          'alias_GiB': round(mem.alias_size_in_bytes / 2 ** 30, 3),
          'xla_flops': float(cost.get('flops', 'nan')),
          'xla_bytes_accessed': float(cost.get('bytes accessed', 'nan'))}


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--preset', default='gpu_1b', choices=sorted(PRESETS))
  p.add_argument('--variants', default='default,plain_loss,chunk_512,remat_none')
  p.add_argument('--layers', type=int, default=2, help='layers per stack (0: as the preset)')
  p.add_argument('--target', default=None,
                 help='compile for these GPUs without having them (1xh200, 1xh100, 8xh100, ...)')
  p.add_argument('--out', default=None)
  args = p.parse_args()
  devices = None
  if args.target:
    target = targets.parse(args.target)
    if target.kind != 'gpu':
      p.error(f'--target {args.target}: a GPU target (TPU targets: python -m launch preflight)')
    if any(os.environ.get(k) != v for k, v in targets.DEVICELESS_GPU_ENV.items()):
      # jax reads these at import, which has happened: run again with them set.
      os.execve(sys.executable, [sys.executable, *sys.argv],
                {**os.environ, **targets.DEVICELESS_GPU_ENV})
    try:
      devices = targets.gpu_devices(target)
    except RuntimeError as e:
      p.error(str(e))
  results = {}
  for name in args.variants.split(','):
    try:
      results[name] = analyse(PRESETS[args.preset], VARIANTS[name], args.layers, devices)
    except Exception as e:  # pylint: disable=broad-except  # an out-of-memory variant is a result
      results[name] = {'error': str(e).strip().splitlines()[0][:400]}
    print(json.dumps({'name': name, **results[name]}), flush=True)
  write_record(args.out, {**record_header(), 'benchmark': 'step_memory', 'preset': args.preset,
                          'layers': args.layers, 'target': args.target,
                          'compiled_for': str(devices[0].device_kind if devices else 'this CPU'),
                          'variants': results})


if __name__ == '__main__':
  main()
