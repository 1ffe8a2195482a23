"""Time and peak RSS of HF export and import for a randomly initialised >= 1B-parameter decoder.

    python benchmarks/convert_memory.py --workdir /tmp/convert_bench [--dtype bfloat16]

Each phase runs in its own process and its peak RSS is read from `os.wait4`: (0) the imports alone, the
floor every phase pays; (1) setup: random parameters -> a model dir with an Orbax checkpoint; (2) export
`python -m t5x_like.convert to-hf`; (3) import `python -m t5x_like.convert from-hf` of that export.
Both directions stream one parameter at a time, so (2) and (3) should stay under floor + weight bytes.
Needs ~3x the weight bytes of disk.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

from t5x_like import run_dir
from t5x_like.convert import from_hf, safetensors_stream as st
from t5x_like.models import DecoderConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# ~1.06B parameters: Llama-style, 18 layers of d=2048, untied 32k vocabulary.
CONFIG = dict(vocab_size=32000, embed_dim=2048, num_layers=18, num_heads=16, num_kv_heads=16,
              head_dim=128, mlp_dim=5632, scan_layers=True)

IMPORTS = ('import jax, numpy, orbax.checkpoint, transformers, torch, tensorflow\n'
           'from t5x_like.convert import to_hf, from_hf\n')


def setup(workdir: str, dtype: str) -> None:
  cfg = DecoderConfig(**CONFIG, param_dtype=dtype)
  rng = np.random.default_rng(0)
  np_dtype = st.np_dtype(dtype)

  def make(tree):
    return {k: make(v) if isinstance(v, dict) else
            (0.02 * rng.standard_normal(v.shape, dtype=np.float32)).astype(np_dtype)
            for k, v in tree.items()}
  params = make(run_dir.abstract_params(cfg))
  run = os.path.join(workdir, 'run')
  from_hf.save_checkpoint(run, params)
  run_dir.save_model_config(run, cfg)


def run_phase(argv: list[str]) -> tuple[float, float]:
  """(seconds, peak RSS GiB) of one child process."""
  t0 = time.perf_counter()
  proc = subprocess.Popen(argv, cwd=REPO, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  _, status, usage = os.wait4(proc.pid, 0)
  secs = time.perf_counter() - t0
  if os.waitstatus_to_exitcode(status) != 0:
    raise SystemExit(f'{argv} failed')
  return secs, usage.ru_maxrss / 2 ** 20  # ru_maxrss is in KiB on Linux


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--workdir', default='/tmp/convert_bench')
  p.add_argument('--dtype', default='bfloat16', choices=['bfloat16', 'float32'])
  p.add_argument('--phase', help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.phase == 'setup':
    return setup(args.workdir, args.dtype)
  shutil.rmtree(args.workdir, ignore_errors=True)
  os.makedirs(args.workdir)
  py = sys.executable
  n = DecoderConfig(**CONFIG).num_params()
  gib = n * (2 if args.dtype == 'bfloat16' else 4) / 2 ** 30
  results = {'params': n, 'dtype': args.dtype, 'weights_GiB': round(gib, 2),
             'cpus': os.cpu_count()}
  for name, argv in [
      ('imports_only', [py, '-c', IMPORTS]),
      ('setup', [py, __file__, '--workdir', args.workdir, '--dtype', args.dtype, '--phase', 'setup']),
      ('export', [py, '-m', 't5x_like.convert', 'to-hf', '--model_dir', f'{args.workdir}/run',
                  '--out', f'{args.workdir}/hf', '--max_shard_size', '1GB']),
      ('import', [py, '-m', 't5x_like.convert', 'from-hf', '--hf', f'{args.workdir}/hf',
                  '--out', f'{args.workdir}/imported', '--param_dtype', args.dtype])]:
    secs, rss = run_phase(argv)
    results[name] = {'seconds': round(secs, 1), 'peak_rss_GiB': round(rss, 2)}
    print(name, results[name], flush=True)
  print(json.dumps(results, indent=2))
  shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == '__main__':
  main()
