"""What a restart pays to compile again, and what the persistent compilation cache saves.

    python benchmarks/restart_compile.py --rounds 2 --out record.json [--gin DecoderConfig.num_layers=8]

Launches `python -m t5x_like.train` (seqio input, the MaxText shape of vs_maxtext.py unless --gin
overrides it) for a few steps, three ways per round, interleaved: without a cache; with an empty cache
directory (the first run of a job, which fills it); and again with that directory and a new MODEL_DIR
(the same program: what a restart after preemption, or the next run of a sweep, compiles). Reports the
trainer's own `compiled train step in X s` and each process's wall time from launch to exit (after one
unrecorded launch that trains the SentencePiece model all of them share).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from records import record_header, write_record  # this directory, next to the script
from vs_maxtext import COMMON, OURS, REPO, ours_env

COMPILED = re.compile(r'compiled train step in ([0-9.]+)s(?: \(([^)]*)\))?')
KINDS = ('no_cache', 'cold_cache', 'warm_cache')


def launch(kind: str, workdir: str, steps: int, extra: list, tag: str) -> dict:
  model_dir = os.path.join(workdir, f'run_{kind}_{tag}')
  cache = os.path.join(workdir, f'cache_{tag}')
  args = [sys.executable, '-m', 't5x_like.train', *OURS['decoder'], *COMMON,
          f"--gin.MODEL_DIR='{model_dir}'", f'--gin.TRAIN_STEPS={steps}',
          f"--gin.sentencepiece_vocabulary.cache_dir='{os.path.join(workdir, 'spm')}'",
          *[f'--gin.{g}' for g in extra]]
  if kind == 'cold_cache':
    shutil.rmtree(cache, ignore_errors=True)
  if kind != 'no_cache':
    args.append(f'--compilation_cache_dir={cache}')
  t0 = time.perf_counter()
  p = subprocess.run(args, capture_output=True, text=True, env=ours_env(), cwd=REPO)
  wall = time.perf_counter() - t0
  out = p.stdout + p.stderr
  m = COMPILED.search(out)
  if p.returncode or not m:
    raise RuntimeError(f'{kind}: exit {p.returncode}, no compile line: {out[-2000:]}')
  return {'kind': kind, 'compile_s': float(m.group(1)), 'note': m.group(2) or '', 'wall_s': wall}


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--rounds', type=int, default=2)
  p.add_argument('--steps', type=int, default=3)
  p.add_argument('--gin', action='append', default=[], help='extra NAME=VALUE binding for the trainer')
  p.add_argument('--out', default=None)
  args = p.parse_args()
  workdir = tempfile.mkdtemp(prefix='restart_compile_')
  launch('no_cache', workdir, args.steps, args.gin, 'warmup')  # trains the shared SentencePiece model
  rows = []
  for r in range(args.rounds):
    for kind in KINDS:
      row = {'round': r + 1, **launch(kind, workdir, args.steps, args.gin, str(r))}
      rows.append(row)
      print(json.dumps(row), flush=True)
  summary = {k: {'compile_s': statistics.median(x['compile_s'] for x in rows if x['kind'] == k),
                 'wall_s': statistics.median(x['wall_s'] for x in rows if x['kind'] == k)}
             for k in KINDS}
  print(json.dumps(summary), flush=True)
  write_record(args.out, {**record_header(), 'benchmark': 'restart_compile',
                          'settings': {'decoder': OURS['decoder'], 'common': COMMON,
                                       'steps': args.steps, 'extra': args.gin},
                          'runs': rows, 'median': summary, 'nproc': os.cpu_count()})
  shutil.rmtree(workdir, ignore_errors=True)


if __name__ == '__main__':
  main()
