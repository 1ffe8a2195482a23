"""How long the training loop waits for a periodic checkpoint, as a share of the checkpoint interval.

    python benchmarks/checkpoint_blocking.py --steps 200 --checkpoint_every 50 --out record.json

Runs the trainer (`python -m t5x_like.train`, seqio input, the MaxText shape of vs_maxtext.py unless
--gin overrides it) with asynchronous Orbax saves and again with synchronous ones. The trainer logs
`checkpoint_blocked_s` (TensorBoard and the progress line) for every log window that holds a periodic
save: the finiteness checks before the save (one device sync) and Orbax's copy of the state to host
memory; the files are written in the background. Interval = checkpoint_every x the median step time of
the windows without a save. Issue 10's target: blocked <= 2% of the interval with async saves.
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

from records import record_header, write_record  # this directory, next to the script
from vs_maxtext import COMMON, OURS, REPO, ours_env

LINE = re.compile(r'^step +(\d+)/\d+ .*\| ([\d.]+) s/step .*?(?:checkpoint blocked ([\d.]+) s)?$')


def run(steps: int, every: int, async_save: bool, workdir: str, extra: list) -> dict:
  model_dir = os.path.join(workdir, f'run_async{int(async_save)}')
  args = [sys.executable, '-m', 't5x_like.train', *OURS['decoder'], *COMMON,
          f"--gin.MODEL_DIR='{model_dir}'", f'--gin.TRAIN_STEPS={steps}',
          f'--gin.TrainerConfig.checkpoint_every={every}', '--gin.TrainerConfig.keep_checkpoints=2',
          f'--gin.TrainerConfig.async_checkpointing={async_save}',
          f"--gin.sentencepiece_vocabulary.cache_dir='{os.path.join(workdir, 'spm')}'", *extra]
  env = ours_env()
  p = subprocess.run(args, capture_output=True, text=True, env=env, cwd=REPO)
  out = p.stdout + p.stderr
  if p.returncode:
    raise RuntimeError(f'run failed (exit {p.returncode}): {out[-2000:]}')
  rows = [m.groups() for m in map(LINE.match, out.splitlines()) if m]
  plain = [float(t) for s, t, b in rows[1:-1] if b is None]  # not the first window (warm-up), nor the last
  blocked = [float(b) for s, t, b in rows if b is not None]
  if not plain or not blocked:
    raise RuntimeError(f'no step windows or no checkpoint lines in the output: {out[-2000:]}')
  step_s = statistics.median(plain)
  interval = every * step_s
  return {'async': async_save, 'step_ms': 1e3 * step_s, 'interval_s': interval,
          'blocked_s_per_save': blocked, 'median_blocked_s': statistics.median(blocked),
          'blocked_share_of_interval': statistics.median(blocked) / interval}


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--steps', type=int, default=200)
  p.add_argument('--checkpoint_every', type=int, default=50)
  p.add_argument('--gin', action='append', default=[], help='extra --gin.X=Y flag for the trainer')
  p.add_argument('--out', default=None)
  args = p.parse_args()
  workdir = tempfile.mkdtemp(prefix='ckpt_blocking_')
  rows = [run(args.steps, args.checkpoint_every, a, workdir, args.gin) for a in (True, False)]
  for r in rows:
    print(json.dumps(r), flush=True)
  write_record(args.out, {**record_header(), 'benchmark': 'checkpoint_blocking',
                          'settings': {'decoder': OURS['decoder'], 'common': COMMON,
                                       'steps': args.steps, 'checkpoint_every': args.checkpoint_every,
                                       'extra': args.gin},
                          'runs': rows, 'nproc': os.cpu_count()})


if __name__ == '__main__':
  main()
