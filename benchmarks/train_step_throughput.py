"""Train-step throughput and MFU of the decoder on whatever devices jax sees, on synthetic tokens.

    python benchmarks/train_step_throughput.py --preset gpu_150m   # one H100/H200
    python benchmarks/train_step_throughput.py --preset cpu_tiny   # the tiny config on CPU

Measures the jitted `trainer.train_step` (the same function the trainer runs) with the batch already on
device, so it isolates the model + optimizer from the input pipeline (see data_throughput.py for that).
Prints one JSON line per variant: step time (median of timed steps after warm-up), tokens/s, MFU.
"""
from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from t5x_like import losses, metrics, optimizers, partitioning, trainer
from t5x_like.models import DecoderConfig, build_model

PRESETS = {
    'cpu_tiny': dict(model=dict(vocab_size=2000, embed_dim=64, num_layers=2, num_heads=4,
                                num_kv_heads=2, head_dim=16, mlp_dim=172, dtype='float32'),
                     batch=16, seq=64, steps=20),
    'cpu_demo': dict(model=dict(vocab_size=4000, embed_dim=128, num_layers=4, num_heads=4,
                                num_kv_heads=2, head_dim=32, mlp_dim=344, dtype='float32'),
                     batch=16, seq=128, steps=20),
    # The model of gin_configs/experiments/clone_ablation_gpu.gin (6 x 256, learned positions, 2 x 8000
    # vocabulary), batch 64 x 256.
    'gpu_clone_ablation': dict(model=dict(vocab_size=16000, embed_dim=256, num_layers=6, num_heads=8,
                                          num_kv_heads=8, head_dim=32, mlp_dim=688, dtype='bfloat16',
                                          position_embedding='learned', max_length=256),
                               batch=64, seq=256, steps=50),
    # ~150M parameters (GPT-2-medium-like width), bf16 compute, fp32 params and Adam state.
    'gpu_150m': dict(model=dict(vocab_size=32000, embed_dim=1024, num_layers=12, num_heads=16,
                                num_kv_heads=8, head_dim=64, mlp_dim=2816, dtype='bfloat16'),
                     batch=32, seq=1024, steps=20),
}


def run(model_kw: dict, batch: int, seq: int, steps: int, **variant) -> dict:
  cfg = DecoderConfig(**{**model_kw, **variant})
  model = build_model(cfg)
  opt = optimizers.OptimizerConfig()
  tx, sched = optimizers.make_optimizer(opt, 1000), optimizers.make_schedule(opt, 1000)
  mesh = partitioning.make_mesh(partitioning.MeshConfig())
  abstract_batch = {k: jax.ShapeDtypeStruct((batch, seq), np.int32)
                    for k in ('decoder_input_tokens', 'decoder_target_tokens')}
  abstract_batch['decoder_loss_weights'] = jax.ShapeDtypeStruct((batch, seq), np.float32)
  _, shardings = trainer.state_shardings(model, tx, abstract_batch, mesh)
  state = trainer.create_state(model, tx, abstract_batch, mesh, shardings, jax.random.key(0))
  steps_fn = trainer.CompiledSteps(model, tx, sched, losses.LossConfig(), mesh, shardings, 1)
  rng = np.random.default_rng(0)
  toks = rng.integers(1, cfg.vocab_size, (batch, seq + 1)).astype(np.int32)
  bsh = partitioning.batch_sharding(mesh)
  b = {'decoder_input_tokens': jax.device_put(toks[:, :-1], bsh),
       'decoder_target_tokens': jax.device_put(toks[:, 1:], bsh),
       'decoder_loss_weights': jax.device_put(np.ones((batch, seq), np.float32), bsh)}
  key = jax.random.key(1)
  t0 = time.perf_counter()
  state, m = steps_fn.train(state, b, key)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    state, m = steps_fn.train(state, b, key)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t)
  step_s = statistics.median(times)
  tok_s = batch * seq / step_s
  peak = metrics.peak_flops_per_device()
  mfu = cfg.flops_per_token(seq) * tok_s / (peak * jax.device_count()) if peak else None
  return {'variant': variant, 'params_M': round(cfg.num_params() / 1e6, 1), 'batch': batch,
          'seq': seq, 'compile_s': round(compile_s, 1), 'step_ms': round(1e3 * step_s, 2),
          'tokens_per_s': round(tok_s), 'mfu': None if mfu is None else round(mfu, 3),
          'loss': float(m['loss']), 'device': jax.devices()[0].device_kind,
          'n_devices': jax.device_count()}


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--preset', default='cpu_tiny', choices=sorted(PRESETS))
  p.add_argument('--variants', default='default',
                 help="comma list of: default, cudnn, remat_full, remat_dots, no_scan")
  args = p.parse_args()
  preset = PRESETS[args.preset]
  table = {'default': {}, 'cudnn': {'attention_impl': 'cudnn'}, 'remat_full': {'remat_policy': 'full'},
           'remat_dots': {'remat_policy': 'dots_with_no_batch_dims'}, 'no_scan': {'scan_layers': False}}
  for name in args.variants.split(','):
    try:
      out = run(preset['model'], preset['batch'], preset['seq'], preset['steps'], **table[name])
    except Exception as e:  # one variant failing (e.g. cudnn absent) must not hide the others
      out = {'variant': table[name], 'error': f'{type(e).__name__}: {str(e).splitlines()[0][:200]}'}
    print(json.dumps({'name': name, **out}), flush=True)


if __name__ == '__main__':
  main()
