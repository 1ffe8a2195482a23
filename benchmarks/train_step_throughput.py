"""Train-step throughput and MFU on whatever devices jax sees, on synthetic tokens.

    python benchmarks/train_step_throughput.py --preset gpu_150m   # one H100/H200
    python benchmarks/train_step_throughput.py --preset cpu_tiny   # the tiny config on CPU
    python benchmarks/train_step_throughput.py --preset cpu_maxtext --variants plain_loss,default \
        --rounds 3 --out record.json                               # interleaved A/B, JSON record

Measures the jitted `trainer.train_step` (the same function the trainer runs) with the batch already on
device, so it isolates the model + optimizer from the input pipeline (see data_throughput.py for that).
Prints one JSON line per variant: step time (median of timed steps after warm-up), tokens/s, MFU.
`--profile DIR` then traces a few steps of the first variant with jax's profiler (DIR/plugins/profile,
TensorBoard's Profile tab) and adds the events that took most time to the record and the table
(t5x_like/profiling.py).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import numpy as np

from t5x_like import losses, metrics, optimizers, partitioning, profiling, provenance, trainer
from t5x_like.models import DecoderConfig, EncDecConfig, build_model

from records import record_header, write_atomically, write_record


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

# GPU suite (scripts/gpu_suite.sh) models and their tiny CPU-smoke stand-ins.
PRESETS.update({
    # ~1.1B Llama-3.2-1B-like decoder (d2048, 16 layers, 32 x 64 heads, 8 KV heads, SwiGLU 8192), untied
    # 32000 vocabulary, seq 2048, bf16 compute, fp32 params and Adam state.
    'gpu_1b': dict(model=dict(vocab_size=32000, embed_dim=2048, num_layers=16, num_heads=32,
                              num_kv_heads=8, head_dim=64, mlp_dim=8192, dtype='bfloat16',
                              attention_impl='cudnn'),
                   batch=8, seq=2048, steps=5),
    # mT5-base-like encoder-decoder: 12+12 layers, d768, 12 x 64 heads, gated-GELU 2048, mT5's 250112
    # vocabulary (untied), inputs 1024 / targets 256.
    'gpu_mt5_base': dict(family='encdec',
                         model=dict(vocab_size=250112, embed_dim=768, num_encoder_layers=12,
                                    num_decoder_layers=12, num_heads=12, head_dim=64, mlp_dim=2048,
                                    dtype='bfloat16', attention_impl='cudnn'),
                         batch=32, seq=256, inputs=1024, steps=5),
    'smoke_decoder': dict(model=dict(vocab_size=512, embed_dim=32, num_layers=2, num_heads=4,
                                     num_kv_heads=2, head_dim=8, mlp_dim=64, dtype='bfloat16'),
                          batch=2, seq=64, steps=2),
    'smoke_encdec': dict(family='encdec',
                         model=dict(vocab_size=512, embed_dim=32, num_encoder_layers=2,
                                    num_decoder_layers=2, num_heads=4, head_dim=8, mlp_dim=64,
                                    dtype='bfloat16'),
                         batch=2, seq=32, inputs=64, steps=2),
})

# name -> overrides of the model config, the loss config and the per-device batch. Variants are the
# levers issue 10 names: fused/chunked loss, attention kernel, remat policy, scan vs unroll, batch.
VARIANTS = {
    'default': {},
    'plain_loss': {'loss': {'fused': False}},
    'chunk_64': {'loss': {'chunk_size': 64}},
    'chunk_512': {'loss': {'chunk_size': 512}},
    'xla_attention': {'model': {'attention_impl': None}},
    'cudnn': {'model': {'attention_impl': 'cudnn'}},
    'remat_none': {'model': {'remat_policy': 'none'}},
    'remat_full': {'model': {'remat_policy': 'full'}},
    'remat_dots': {'model': {'remat_policy': 'dots_with_no_batch_dims'}},
    'remat_attention': {'model': {'remat_policy': 'dots_and_fused_attention'}},
    # Packed rows: a [batch, 1, seq, seq] segment mask (a bias for cuDNN) instead of is_causal.
    'segment_mask': {'segments': True},
    'no_scan': {'model': {'scan_layers': False}},
    'no_scan_plain_loss': {'model': {'scan_layers': False}, 'loss': {'fused': False}},
    'remat_full_plain_loss': {'model': {'remat_policy': 'full'}, 'loss': {'fused': False}},
    'batch_x2': {'batch_scale': 2},
    'no_scan_chunk_512': {'model': {'scan_layers': False}, 'loss': {'chunk_size': 512}},
}


def _batch(family: str, cfg, batch: int, seq: int, inputs: int, mesh, segments: bool = False):
  rng = np.random.default_rng(0)
  toks = rng.integers(1, cfg.vocab_size, (batch, seq + 1)).astype(np.int32)
  b = {'decoder_input_tokens': toks[:, :-1], 'decoder_target_tokens': toks[:, 1:],
       'decoder_loss_weights': np.ones((batch, seq), np.float32)}
  if segments:  # as packing writes them: here one document per row
    b['decoder_segment_ids'] = np.ones((batch, seq), np.int32)
    b['decoder_positions'] = np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy()
  if family == 'encdec':
    b['encoder_input_tokens'] = rng.integers(1, cfg.vocab_size, (batch, inputs)).astype(np.int32)
  bsh = partitioning.batch_sharding(mesh)
  return {k: jax.device_put(v, bsh) for k, v in b.items()}


def _batch_size(preset: dict, variant: dict) -> int:
  return preset['batch'] * variant.get('batch_scale', 1) * jax.device_count()


def setup(preset: dict, variant: dict):
  """(step function, init, batch, model config) for one variant: init() makes a fresh state (one
  compiled program, so each timed block can start from its own and only one variant's state need be
  in device memory at a time: a 1B model's is 12.3 GiB)."""
  family = preset.get('family', 'decoder')
  cfg = (DecoderConfig if family == 'decoder' else EncDecConfig)(
      **{**preset['model'], **variant.get('model', {})})
  model = build_model(cfg)
  opt = optimizers.OptimizerConfig()
  tx, sched = optimizers.make_optimizer(opt, 1000), optimizers.make_schedule(opt, 1000)
  mesh = partitioning.make_mesh(partitioning.MeshConfig())
  b = _batch(family, cfg, _batch_size(preset, variant), preset['seq'], preset.get('inputs', 0), mesh,
             variant.get('segments', False))
  abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in b.items()}
  _, shardings = trainer.state_shardings(model, tx, abstract_batch, mesh)
  init_jit = jax.jit(lambda r: partitioning.unbox(trainer.init_fn(model, tx, abstract_batch, r)),
                     out_shardings=shardings)

  def init():
    with trainer.mesh_context(mesh):
      return init_jit(jax.random.key(0))

  steps_fn = trainer.CompiledSteps(model, tx, sched, losses.LossConfig(**variant.get('loss', {})),
                                   mesh, shardings, 1)
  return steps_fn, init, b, cfg


def time_steps(steps_fn, state, b, n: int):
  key = jax.random.key(1)
  times = []
  for _ in range(n):
    t = time.perf_counter()
    state, m = steps_fn.train(state, b, key)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t)
  return state, m, times


def measure(preset: dict, variant: dict, n: int) -> dict:
  """One variant alone: {'step_ms'} (median of n steps after a compile and a warm step)."""
  steps_fn, init, b, _ = setup(preset, variant)
  state, _, _ = time_steps(steps_fn, init(), b, 2)
  _, _, times = time_steps(steps_fn, state, b, n)
  return {'step_ms': round(1e3 * statistics.median(times), 3)}


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--preset', default='cpu_tiny', choices=sorted(PRESETS))
  p.add_argument('--variants', default='default', help=f'comma list of: {", ".join(VARIANTS)}')
  p.add_argument('--rounds', type=int, default=1,
                 help='timed blocks per variant, interleaved across variants (A B A B ...)')
  p.add_argument('--steps', type=int, default=None, help='timed steps per block (preset default)')
  p.add_argument('--out', default=None, help='write the JSON record here')
  p.add_argument('--markdown', default=None, help='write a markdown table here')
  p.add_argument('--budget_s', type=float, default=None,
                 help='skip the variants not yet built once this many seconds have passed')
  p.add_argument('--profile', default=None, metavar='DIR',
                 help='trace --profile_steps steps of the first variant into DIR, and summarize them')
  p.add_argument('--profile_steps', type=int, default=3)
  args = p.parse_args()
  started = time.perf_counter()
  preset = PRESETS[args.preset]
  n = args.steps or preset['steps']
  names = args.variants.split(',')
  built, results = {}, {}
  for name in names:
    # A variant starts only if it should be built within the budget (its build taken to be as long as
    # the longest so far: a 1B model compiles for about a minute), so that the step's time limit
    # (scripts/gpu_suite.sh: budget + 120 s) is not spent on one that cannot be timed.
    longest_build = max((v[4] for v in built.values()), default=0.)
    if args.budget_s and time.perf_counter() - started + longest_build > args.budget_s:
      results[name] = {'skipped': f'time budget of {args.budget_s:.0f} s spent'}
      print(json.dumps({'name': name, **results[name]}), flush=True)
      continue
    try:
      t0 = time.perf_counter()
      steps_fn, init, b, cfg = setup(preset, VARIANTS[name])
      state, _, _ = time_steps(steps_fn, init(), b, 2)  # compile + one warm step
      del state  # each block starts from a fresh state: one variant's in device memory at a time
      built[name] = [steps_fn, init, b, cfg, time.perf_counter() - t0, []]
      results[name] = {'pending': f'built in {built[name][4]:.0f} s, not timed yet'}
    except Exception as e:  # one variant failing (e.g. cudnn absent) must not hide the others
      results[name] = {'error': f'{type(e).__name__}: {str(e).splitlines()[0][:200]}'}
      print(json.dumps({'name': name, **results[name]}), flush=True)
  record = {**record_header(), 'benchmark': 'train_step_throughput', 'preset': args.preset,
            'rounds': args.rounds, 'steps_per_round': n,
            'step_ms_is': 'best of the per-round medians', 'variants': results}
  _write(args, dict(record, rounds_done=0))
  for done in range(1, args.rounds + 1):
    for name, v in list(built.items()):
      try:
        state, m, times = time_steps(v[0], v[1](), v[2], n)
      except Exception as e:  # e.g. out of memory for a fresh state: the other variants go on
        results[name] = {'error': f'round {done}: {type(e).__name__}: {str(e).splitlines()[0][:200]}'}
        del built[name]
        continue
      del state
      v[5].append(statistics.median(times))
      v.append(m)
    # Written after every round (and again after the profile): a run stopped by its time limit
    # keeps what it measured.
    results.update(_timed_results(preset, built))
    _write(args, dict(record, rounds_done=done))
  for name in built:
    print(json.dumps({'name': name, **results[name]}), flush=True)
  if args.profile and built:
    record['profile'] = {'variant': next(iter(built)), 'error': 'the trace did not finish'}
    _write(args, dict(record, rounds_done=args.rounds))
    record['profile'] = profile(next(iter(built.items())), args.profile, args.profile_steps)
    print(json.dumps({'profile': record['profile']}), flush=True)
    _write(args, dict(record, rounds_done=args.rounds))


def _timed_results(preset: dict, built: dict) -> dict:
  """name -> the step time (best of the rounds' medians so far), tokens/s and MFU of each variant."""
  peak = metrics.peak_flops_per_device()
  out = {}
  for name, v in built.items():
    _, _, _, cfg, setup_s, medians = v[:6]
    variant = VARIANTS[name]
    batch = _batch_size(preset, variant)
    step_s = min(medians)
    tok_s = batch * preset['seq'] / step_s
    flops = _flops_per_token(cfg, preset)
    mfu = flops * tok_s / (peak * jax.device_count()) if peak else None
    out[name] = {'model': dict(preset['model'], **variant.get('model', {})),
                 'loss': variant.get('loss', {}),
                 'params_M': round(cfg.num_params() / 1e6, 2), 'batch': batch,
                 'seq': preset['seq'], 'inputs': preset.get('inputs'),
                 'setup_and_compile_s': round(setup_s, 1),
                 'round_median_step_ms': [round(1e3 * t, 2) for t in medians],
                 'step_ms': round(1e3 * step_s, 2), 'tokens_per_s': round(tok_s),
                 'mfu': None if mfu is None else round(mfu, 4),
                 'flops_per_token': flops,
                 'final_loss': float(v[-1]['loss'])}
  return out


def _write(args, record: dict) -> None:
  write_record(args.out, record)
  if args.markdown:
    write_atomically(args.markdown, markdown(record))


def profile(item, directory: str, num_steps: int) -> dict:
  """Traces `num_steps` more steps of one built variant; the summary of the trace."""
  name, v = item
  profiler = profiling.StepProfiler(directory, 1, num_steps)
  key = jax.random.key(1)
  state, trace = v[1](), None
  for step in range(1, num_steps + 1):
    warning = profiler.before(step)
    if warning:
      return {'variant': name, 'error': warning}
    state, m = v[0].train(state, v[2], key)
    trace = profiler.after(step, (state, m)) or trace
  del state
  if trace is None:
    return {'variant': name, 'error': 'the profiler wrote no trace file'}
  try:
    return {'variant': name, 'steps': num_steps, **profiling.summarize(trace)}
  except Exception as e:  # the timings above are the record; a summary that fails must not lose them
    return {'variant': name, 'error': f'trace {trace}, no summary: {type(e).__name__}: {e}'[:400]}


def _flops_per_token(cfg, preset: dict) -> float:
  if preset.get('family') == 'encdec':
    return cfg.flops_per_token(preset['seq'], inputs_len=preset.get('inputs'))
  return cfg.flops_per_token(preset['seq'])


def markdown(record: dict) -> str:
  """One table per record: the rows BENCHMARKS.md quotes."""
  lines = [f"### `{record['preset']}` on {record['n_devices']} x {record['device']} "
           f"(jax {record['jax_version']}, commit {provenance.short(record['commit'])}, "
           f"{record['time']})", '',
           f"MFU = flops_per_token x tokens/s / (peak x devices); FLOPs per token: "
           f"{record['flop_formula']}; peak {record['peak_flops_per_device']} FLOP/s per device "
           f"({record['peak_note']}).", '',
           *([f"Stopped after {record['rounds_done']} of {record['rounds']} timed rounds.", '']
             if record.get('rounds_done', record['rounds']) < record['rounds'] else []),
           '| variant | params | batch x seq | step | tokens/s | MFU | compile |',
           '|---|---|---|---|---|---|---|']
  for name, r in record['variants'].items():
    if 'step_ms' not in r:
      lines.append(f"| {name} | {r.get('error') or r.get('skipped') or r.get('pending')} | | | | | |")
      continue
    mfu = 'n/a' if r['mfu'] is None else f"{100 * r['mfu']:.1f}%"
    lines.append(f"| {name} | {r['params_M']}M | {r['batch']} x {r['seq']} | {r['step_ms']} ms | "
                 f"{r['tokens_per_s']} | {mfu} | {r['setup_and_compile_s']} s |")
  prof = record.get('profile')
  if prof and 'ops' in prof:
    lines += ['', f"Where the time of `{prof['variant']}` went ({prof['steps']} traced steps; "
              f"{prof['source']}, {prof['total_ms']:.1f} ms summed; trace `{prof['trace']}`):", '',
              '| share | time | count | event | XLA op |', '|---|---|---|---|---|']
    for op in prof['ops']:
      lines.append(f"| {100 * op['share']:.1f}% | {op['ms']:.2f} ms | {op['count']} | "
                   f"`{op['name'][:80]}` | {op['hlo_op'] if op['hlo_op'] != op['name'] else ''} |")
  elif prof:
    lines += ['', f"Profile of `{prof['variant']}`: {prof['error']}"]
  return '\n'.join(lines) + '\n'


if __name__ == '__main__':
  main()
