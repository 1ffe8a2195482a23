"""This trainer's full loop against MaxText's, side by side on one machine, interleaved rounds.

Issue 10's CPU comparison: bf16, 1024 tokens per step, the MaxText shape (Llama-style decoder, 2 layers,
d128, 4 heads x 32, MLP 512, seq 128, batch 8, vocab 8192). Each round runs MaxText's trainer
(`maxtext.trainers.pre_train.train`, synthetic data, no checkpoints) and then ours
(`python -m t5x_like.train`: seqio input pipeline on real text, packing, metrics, TensorBoard events,
one final checkpoint) as separate processes, so both pay their own loop. With --export, ours also
reads the same stream exported to ArrayRecord (`python -m tasks export`, Grain, no TensorFlow). Optionally ours at the T5X
encoder-decoder shape too (2+2 layers, d128, gated-GELU 512, 64/64, batch 8); T5X itself is not run.

MaxText needs Python >= 3.12, so it runs from its own virtual environment, never in the repo:

    /root/.pyenv/versions/3.12.1/bin/python3.12 -m venv /tmp/maxtext_venv
    /tmp/maxtext_venv/bin/pip install maxtext==0.2.5 jax==0.10.2 jaxlib==0.10.2
    /tmp/maxtext_venv/bin/pip install -c constraints.txt absl-py aqtp array-record chex drjax flax \\
        grain jaxtyping jsonlines ml-collections ml-goodput-measurement omegaconf optax \\
        orbax-checkpoint pathwaysutils pydantic sentencepiece tensorboardx tiktoken qwix tokamax \\
        huggingface_hub pillow protobuf transformers jinja2 sympy
    # constraints.txt: jax==0.10.2 jaxlib==0.10.2 flax==0.12.8 optax==0.2.8 orbax-checkpoint==0.12.8
    python benchmarks/vs_maxtext.py --maxtext_python /tmp/maxtext_venv/bin/python --rounds 3 \\
        --bare --encdec --export --out /tmp/vs_maxtext.json

maxtext 0.2.5 declares its dependencies only under extras (cuda12/tpu, which pull jax >= 0.11.1), so
they are installed by hand as above. With jax 0.10.2 one import fails: its flash-attention kernel
imports `jax.experimental.xla_metadata.must_fuse_call` (added after 0.10.2). The launcher below adds a
pass-through stand-in for that name only; the kernel is not used (attention=dot_product on CPU).

Step time: MaxText's own per-step "seconds" (median over steps after the first 5); ours: the trainer's
logged s/step windows (log_every=10), median of the windows after the first and before the last
(which holds the final, blocking checkpoint). The ratio is quoted per round and overall.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # t5x_like, for records' provenance, when run without the venv's install

from records import record_header, write_record  # noqa: E402  (this directory, next to the script)

MAXTEXT_LAUNCHER = '''
import sys
import jax.experimental.xla_metadata as xm
if not hasattr(xm, 'must_fuse_call'):  # jax 0.10.2: only MaxText's (unused) flash kernel imports it
  xm.must_fuse_call = lambda *a, **k: (lambda f: f)
from absl import app
from maxtext.trainers.pre_train import train
app.run(train.main, argv=sys.argv)
'''

MAXTEXT_SHAPE = dict(base_emb_dim=128, base_num_query_heads=4, base_num_kv_heads=4, head_dim=32,
                     base_mlp_dim=512, base_num_decoder_layers=2, max_target_length=128,
                     per_device_batch_size=8, vocab_size=8192)

TEXT = ['../shared/data/parallel/multi30k/train.en', '../shared/data/parallel/multi30k/train.de',
        '../shared/data/parallel/multi30k/train.fr']

OURS = {
    'decoder': ['--gin_file=gin_configs/examples/tiny_decoder_pretrain.gin',
                '--gin.SEQUENCE_LENGTH=128', '--gin.DecoderConfig.embed_dim=128',
                '--gin.DecoderConfig.num_heads=4', '--gin.DecoderConfig.num_kv_heads=4',
                '--gin.DecoderConfig.head_dim=32', '--gin.DecoderConfig.mlp_dim=512',
                "--gin.DecoderConfig.dtype='bfloat16'"],
    'encdec': ['--gin_file=gin_configs/examples/tiny_encdec_pretrain.gin',
               '--gin.SEQUENCE_LENGTH=64', '--gin.EncDecConfig.embed_dim=128',
               '--gin.EncDecConfig.num_heads=4', '--gin.EncDecConfig.head_dim=32',
               '--gin.EncDecConfig.mlp_dim=512', "--gin.EncDecConfig.dtype='bfloat16'"],
}
COMMON = [f'--gin.TRAIN_FILES={TEXT!r}', '--gin.VOCAB_SIZE=8192', '--gin.BATCH_SIZE=8',
          '--gin.TrainerConfig.log_every=10', '--gin.TrainerConfig.checkpoint_every=100000',
          '--gin.train.eval_data=None']


def ours_env() -> dict:
  """Our processes' environment: this checkout, CPU, one device (no fake-device XLA_FLAGS)."""
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  return env


def run_maxtext(python: str, steps: int, workdir: str, extra: list) -> dict:
  launcher = os.path.join(workdir, 'maxtext_launch.py')
  with open(launcher, 'w') as f:
    f.write(MAXTEXT_LAUNCHER)
  base_yml = subprocess.run(
      [python, '-c', 'import maxtext, os; print(os.path.join(os.path.dirname(maxtext.__file__), '
                     '"configs", "base.yml"))'], capture_output=True, text=True, check=True).stdout.strip()
  run_name = f'r{time.time_ns()}'
  args = [python, launcher, base_yml, f'run_name={run_name}',
          f'base_output_directory={os.path.join(workdir, "maxtext_out")}', 'dataset_type=synthetic',
          f'steps={steps}', 'enable_checkpointing=false', 'attention=dot_product',
          'enable_tensorboard=false'] + [f'{k}={v}' for k, v in MAXTEXT_SHAPE.items()] + extra
  env = dict(os.environ, JAX_PLATFORMS='cpu', DECOUPLE_GCLOUD='TRUE')
  env.pop('XLA_FLAGS', None)
  t0 = time.perf_counter()
  p = subprocess.run(args, capture_output=True, text=True, env=env, cwd=workdir)
  wall = time.perf_counter() - t0
  out = p.stdout + p.stderr
  secs = [(int(s), float(t)) for s, t in re.findall(r'completed step: (\d+), seconds: ([\d.]+)', out)]
  if p.returncode or len(secs) < 8:
    raise RuntimeError(f'MaxText run failed (exit {p.returncode}): {out[-2000:]}')
  steady = [t for s, t in secs if s >= 5]
  losses = re.findall(r'completed step: \d+, .*? loss: ([\d.]+)', out)
  return {'step_ms': 1e3 * statistics.median(steady), 'steps': steps, 'wall_s': wall,
          'last_loss': float(losses[-1]) if losses else None}


def run_ours(family: str, steps: int, workdir: str, extra: list) -> dict:
  model_dir = os.path.join(workdir, f'ours_{family}_{time.time_ns()}')
  args = [sys.executable, '-m', 't5x_like.train', *OURS[family], *COMMON,
          f"--gin.MODEL_DIR='{model_dir}'", f'--gin.TRAIN_STEPS={steps}',
          f"--gin.sentencepiece_vocabulary.cache_dir='{os.path.join(workdir, 'spm')}'", *extra]
  env = ours_env()
  t0 = time.perf_counter()
  p = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO)
  wall = time.perf_counter() - t0
  out = p.stdout + p.stderr
  windows = [float(t) for t in re.findall(r'\| ([\d.]+) s/step \|', out)]
  if p.returncode or len(windows) < 3:
    raise RuntimeError(f'our run failed (exit {p.returncode}): {out[-2000:]}')
  losses = re.findall(r'\| loss ([\d.]+) \|', out)
  return {'step_ms': 1e3 * statistics.median(windows[1:-1]), 'steps': steps, 'wall_s': wall,
          'last_loss': float(losses[-1])}


def export_ours(steps: int, workdir: str) -> list:
  """Exports the decoder's training stream (`python -m tasks export`, after packing) once; returns the
  flags that make a run read it with Grain instead of seqio."""
  out = os.path.join(workdir, 'export')
  bindings = [a[len('--gin.'):] for a in OURS['decoder'][1:] + COMMON] + [
      f"sentencepiece_vocabulary.cache_dir='{os.path.join(workdir, 'spm')}'"]
  args = [sys.executable, '-m', 'tasks', 'export', '--output', out, '--steps', str(steps),
          '--gin_file', OURS['decoder'][0].split('=', 1)[1]]
  for b in bindings:
    args += ['--gin_bindings', b.replace('=', ' = ', 1)]
  env = ours_env()
  p = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO)
  if p.returncode:
    raise RuntimeError(f'export failed (exit {p.returncode}): {(p.stdout + p.stderr)[-2000:]}')
  return [f"--gin.DataConfig.export_dir='{out}'", '--gin.DataConfig.mixture_or_task=None']


def run_bare(steps: int) -> dict:
  env = ours_env()
  t0 = time.perf_counter()
  p = subprocess.run([sys.executable, 'benchmarks/train_step_throughput.py', '--preset', 'cpu_maxtext',
                      '--steps', str(steps)], capture_output=True, text=True, env=env, cwd=REPO)
  lines = [json.loads(l) for l in p.stdout.splitlines() if l.startswith('{')]
  if p.returncode or not lines or 'step_ms' not in lines[0]:
    raise RuntimeError(f'bare step run failed (exit {p.returncode}): {(p.stdout + p.stderr)[-2000:]}')
  return {'step_ms': lines[0]['step_ms'], 'steps': steps, 'wall_s': time.perf_counter() - t0,
          'last_loss': lines[0]['final_loss']}


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--maxtext_python', default='/tmp/maxtext_venv/bin/python')
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--maxtext_steps', type=int, default=40)
  p.add_argument('--our_steps', type=int, default=60)
  p.add_argument('--encdec', action='store_true', help='also ours at the T5X encoder-decoder shape')
  p.add_argument('--bare', action='store_true',
                 help="also our bare jitted step at the decoder shape (train_step_throughput.py): the "
                      "full loop's overhead over it")
  p.add_argument('--no_maxtext', action='store_true', help='only our runs')
  p.add_argument('--export', action='store_true',
                 help='also ours reading the same text exported to ArrayRecord (Grain, no TensorFlow)')
  p.add_argument('--plain_loss', action='store_true',
                 help="also ours with LossConfig.fused=False (the loss before the fused one)")
  p.add_argument('--maxtext_args', default='', help='extra MaxText key=value settings, space separated')
  p.add_argument('--our_args', default='',
                 help="extra --gin.X=Y flags for our decoder, space separated; give it as "
                      "--our_args='--gin.X=Y' (with '=') so argparse does not read it as an option")
  p.add_argument('--out', default=None)
  args = p.parse_args()
  workdir = tempfile.mkdtemp(prefix='vs_maxtext_')
  export_flags = export_ours(args.our_steps, workdir) if args.export else None
  rounds = []
  for r in range(args.rounds):
    row = {}
    if not args.no_maxtext:
      row['maxtext'] = run_maxtext(args.maxtext_python, args.maxtext_steps, workdir,
                                   args.maxtext_args.split())
    row['ours_decoder'] = run_ours('decoder', args.our_steps, workdir, args.our_args.split())
    if export_flags:
      row['ours_decoder_export'] = run_ours('decoder', args.our_steps, workdir,
                                            args.our_args.split() + export_flags)
    if args.bare:
      row['ours_bare_step'] = run_bare(args.our_steps)
      row['loop_overhead'] = row['ours_decoder']['step_ms'] / row['ours_bare_step']['step_ms'] - 1
    if args.plain_loss:
      row['ours_decoder_plain_loss'] = run_ours('decoder', args.our_steps, workdir,
                                                args.our_args.split() + ['--gin.LossConfig.fused=False'])
    if args.encdec:
      row['ours_encdec'] = run_ours('encdec', args.our_steps, workdir, [])
      if args.plain_loss:
        row['ours_encdec_plain_loss'] = run_ours('encdec', args.our_steps, workdir,
                                                 ['--gin.LossConfig.fused=False'])
    if 'maxtext' in row:
      row['ours_vs_maxtext_speedup'] = row['maxtext']['step_ms'] / row['ours_decoder']['step_ms']
    print(json.dumps({'round': r + 1, **row}), flush=True)
    rounds.append(row)
  summary = {k: statistics.median(r[k]['step_ms'] for r in rounds)
             for k in rounds[0] if isinstance(rounds[0][k], dict)}
  if 'maxtext' in summary:
    summary['ours_vs_maxtext_speedup'] = summary['maxtext'] / summary['ours_decoder']
  if args.bare:
    summary['loop_overhead'] = summary['ours_decoder'] / summary['ours_bare_step'] - 1
    if export_flags:
      summary['loop_overhead_export'] = summary['ours_decoder_export'] / summary['ours_bare_step'] - 1
  if 'maxtext' in summary and export_flags:
    summary['ours_export_vs_maxtext_speedup'] = summary['maxtext'] / summary['ours_decoder_export']
  maxtext_version = subprocess.run(
      [args.maxtext_python, '-c', 'import importlib.metadata as m; print(m.version("maxtext"), '
                                  'm.version("jax"))'], capture_output=True, text=True).stdout.split()
  record = {**record_header(), 'benchmark': 'vs_maxtext', 'tokens_per_step': 1024,
            'maxtext_version': maxtext_version[:1], 'maxtext_jax_version': maxtext_version[1:],
            'maxtext_settings': dict(MAXTEXT_SHAPE, dataset_type='synthetic',
                                     attention='dot_product', extra=args.maxtext_args),
            'ours_settings': {k: v for k, v in OURS.items() if k == 'decoder' or args.encdec},
            'our_extra_args': args.our_args, 'rounds': rounds, 'median_step_ms': summary,
            'cpu': _cpu_name(), 'nproc': os.cpu_count()}
  print(json.dumps({'median_step_ms': summary}), flush=True)
  write_record(args.out, record)


def _cpu_name() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      return next(l.split(':', 1)[1].strip() for l in f if l.startswith('model name'))
  except (OSError, StopIteration):
    return 'unknown'


if __name__ == '__main__':
  main()
