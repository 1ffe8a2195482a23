"""Train-step throughput and MFU on whatever devices jax sees, on synthetic tokens.

    python benchmarks/train_step_throughput.py --preset gpu_150m   # one H100/H200
    python benchmarks/train_step_throughput.py --preset cpu_tiny   # the tiny config on CPU
    python benchmarks/train_step_throughput.py --preset cpu_maxtext --variants plain_loss,default \
        --rounds 3 --out record.json                               # interleaved A/B, JSON record

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
from t5x_like.models import DecoderConfig, EncDecConfig, build_model

PEAK_NOTE = 'dense bf16 peak of the device (t5x_like/metrics.py; 989 TFLOP/s for H100 and H200)'

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
    # The MaxText and T5X side-by-side shapes of issue 10 (1024 target tokens per step, bf16).
    'cpu_maxtext': dict(model=dict(vocab_size=8192, embed_dim=128, num_layers=2, num_heads=4,
                                   num_kv_heads=4, head_dim=32, mlp_dim=512, dtype='bfloat16'),
                        batch=8, seq=128, steps=20),
    'cpu_t5x': dict(family='encdec',
                    model=dict(vocab_size=8192, embed_dim=128, num_encoder_layers=2,
                               num_decoder_layers=2, num_heads=4, head_dim=32, mlp_dim=512,
                               dtype='bfloat16'),
                    batch=8, seq=64, inputs=64, steps=20),
}

# name -> (model config overrides, loss config overrides)
VARIANTS = {
    'default': ({}, {}),
    'plain_loss': ({}, {'fused': False}),
    'chunk_64': ({}, {'chunk_size': 64}),
    'chunk_512': ({}, {'chunk_size': 512}),
    'cudnn': ({'attention_impl': 'cudnn'}, {}),
    'remat_full': ({'remat_policy': 'full'}, {}),
    'remat_dots': ({'remat_policy': 'dots_with_no_batch_dims'}, {}),
    'no_scan': ({'scan_layers': False}, {}),
    'no_scan_plain_loss': ({'scan_layers': False}, {'fused': False}),
    'remat_full_plain_loss': ({'remat_policy': 'full'}, {'fused': False}),
}


def _batch(family: str, cfg, batch: int, seq: int, inputs: int, mesh):
  rng = np.random.default_rng(0)
  toks = rng.integers(1, cfg.vocab_size, (batch, seq + 1)).astype(np.int32)
  b = {'decoder_input_tokens': toks[:, :-1], 'decoder_target_tokens': toks[:, 1:],
       'decoder_loss_weights': np.ones((batch, seq), np.float32)}
  if family == 'encdec':
    b['encoder_input_tokens'] = rng.integers(1, cfg.vocab_size, (batch, inputs)).astype(np.int32)
  bsh = partitioning.batch_sharding(mesh)
  return {k: jax.device_put(v, bsh) for k, v in b.items()}


def setup(preset: dict, model_over: dict, loss_over: dict):
  """(step function, state, batch, model config) for one variant, compiled."""
  family = preset.get('family', 'decoder')
  cfg = (DecoderConfig if family == 'decoder' else EncDecConfig)(**{**preset['model'], **model_over})
  model = build_model(cfg)
  opt = optimizers.OptimizerConfig()
  tx, sched = optimizers.make_optimizer(opt, 1000), optimizers.make_schedule(opt, 1000)
  mesh = partitioning.make_mesh(partitioning.MeshConfig())
  b = _batch(family, cfg, preset['batch'], preset['seq'], preset.get('inputs', 0), mesh)
  abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in b.items()}
  _, shardings = trainer.state_shardings(model, tx, abstract_batch, mesh)
  state = trainer.create_state(model, tx, abstract_batch, mesh, shardings, jax.random.key(0))
  steps_fn = trainer.CompiledSteps(model, tx, sched, losses.LossConfig(**loss_over), mesh, shardings,
                                   1)
  return steps_fn, state, b, cfg


def time_steps(steps_fn, state, b, n: int):
  key = jax.random.key(1)
  times = []
  for _ in range(n):
    t = time.perf_counter()
    state, m = steps_fn.train(state, b, key)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t)
  return state, m, times


def record_header() -> dict:
  """What every record of this directory carries: commit, device, jax version, MFU formula, peak."""
  import subprocess
  try:
    commit = subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True, text=True,
                            check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    commit = None
  return {'commit': commit, 'device': jax.devices()[0].device_kind,
          'platform': jax.devices()[0].platform, 'n_devices': jax.device_count(),
          'jax_version': jax.__version__,
          'flop_formula': '6 x (non-embedding params + LM head) + attention 12*L*H*hd*seq (/2 causal) '
                          'per token (DecoderConfig/EncDecConfig.flops_per_token)',
          'peak_flops_per_device': metrics.peak_flops_per_device(), 'peak_note': PEAK_NOTE,
          'time': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--preset', default='cpu_tiny', choices=sorted(PRESETS))
  p.add_argument('--variants', default='default', help=f'comma list of: {", ".join(VARIANTS)}')
  p.add_argument('--rounds', type=int, default=1,
                 help='timed blocks per variant, interleaved across variants (A B A B ...)')
  p.add_argument('--steps', type=int, default=None, help='timed steps per block (preset default)')
  p.add_argument('--out', default=None, help='write the JSON record here')
  args = p.parse_args()
  preset = PRESETS[args.preset]
  n = args.steps or preset['steps']
  names = args.variants.split(',')
  built, results = {}, {}
  for name in names:
    try:
      t0 = time.perf_counter()
      steps_fn, state, b, cfg = setup(preset, *VARIANTS[name])
      state, _, _ = time_steps(steps_fn, state, b, 2)  # compile + one warm step
      built[name] = [steps_fn, state, b, cfg, time.perf_counter() - t0, []]
    except Exception as e:  # one variant failing (e.g. cudnn absent) must not hide the others
      results[name] = {'error': f'{type(e).__name__}: {str(e).splitlines()[0][:200]}'}
      print(json.dumps({'name': name, **results[name]}), flush=True)
  for _ in range(args.rounds):
    for name, v in built.items():
      v[1], m, times = time_steps(v[0], v[1], v[2], n)
      v[5].append(statistics.median(times))
      v.append(m)
  peak = metrics.peak_flops_per_device()
  tokens = preset['batch'] * preset['seq']
  for name, v in built.items():
    _, _, _, cfg, setup_s, medians = v[:6]
    step_s = min(medians)
    tok_s = tokens / step_s
    mfu = cfg.flops_per_token(preset['seq']) * tok_s / (peak * jax.device_count()) if peak else None
    results[name] = {'model': dict(preset['model'], **VARIANTS[name][0]), 'loss': VARIANTS[name][1],
                     'params_M': round(cfg.num_params() / 1e6, 2), 'batch': preset['batch'],
                     'seq': preset['seq'], 'setup_and_compile_s': round(setup_s, 1),
                     'round_median_step_ms': [round(1e3 * t, 2) for t in medians],
                     'step_ms': round(1e3 * step_s, 2), 'tokens_per_s': round(tok_s),
                     'mfu': None if mfu is None else round(mfu, 4),
                     'flops_per_token': cfg.flops_per_token(preset['seq']),
                     'final_loss': float(v[-1]['loss'])}
    print(json.dumps({'name': name, **results[name]}), flush=True)
  record = {**record_header(), 'benchmark': 'train_step_throughput', 'preset': args.preset,
            'rounds': args.rounds, 'steps_per_round': n,
            'step_ms_is': 'best of the per-round medians', 'variants': results}
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(record, f, indent=1)


if __name__ == '__main__':
  main()
