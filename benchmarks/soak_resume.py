"""Soak test of exact resume (not a unit test: minutes of CPU): a tiny run interrupted N times.

    python benchmarks/soak_resume.py --interruptions 20 --seed 0

First trains the tiny decoder (gin_configs/examples/tiny_decoder_pretrain.gin, one CPU process)
uninterrupted to TRAIN_STEPS, then trains it again in a fresh MODEL_DIR while interrupting it
N times with SIGKILL or SIGTERM (chosen at random) at random moments: during start-up and compile, at a
random step, and right after a checkpoint step (while Orbax's asynchronous save is in flight). After
each interruption the same command is run again, as a launcher would, until the run finishes.

Every train loss that any of the interrupted processes logged to TensorBoard (steps between the last
checkpoint and an interruption are trained, and logged, more than once) must equal the uninterrupted
run's loss of the same step bit for bit, and every step must be there. Prints one JSON line; exit
status 0 when everything matched.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

REPO = pathlib.Path(__file__).resolve().parents[1]
STEP_LINE = re.compile(r'^step +(\d+)/\d+ ')


def _command(model_dir, steps, checkpoint_every):
  return [sys.executable, '-m', 't5x_like.train',
          '--gin_file=gin_configs/examples/tiny_decoder_pretrain.gin',
          f"--gin.MODEL_DIR='{model_dir}'", f'--gin.TRAIN_STEPS={steps}',
          '--gin.train.eval_data=None', '--gin.TrainerConfig.log_every=1',
          f'--gin.TrainerConfig.checkpoint_every={checkpoint_every}']


def _start(cmd, log_path):
  env = dict(os.environ, PYTHONUNBUFFERED='1', PYTHONPATH=str(REPO))
  log = open(log_path, 'w')
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True), log


def _steps_logged(log_path) -> list[int]:
  out = []
  for line in pathlib.Path(log_path).read_text(errors='replace').splitlines():
    m = STEP_LINE.match(line)
    if m:
      out.append(int(m.group(1)))
  return out


def tb_losses(model_dir) -> dict[int, list[float]]:
  """{step: [loss of every time it was logged]} over every event file of the run."""
  out: dict[int, list[float]] = {}
  for f in sorted((pathlib.Path(model_dir) / 'train').glob('events.out.tfevents.*')):
    ea = event_accumulator.EventAccumulator(str(f), size_guidance={'tensors': 0})
    ea.Reload()
    if 'loss' not in ea.Tags().get('tensors', []):
      continue  # a process killed before its first log
    for e in ea.Tensors('loss'):
      out.setdefault(e.step, []).append(float(tensor_util.make_ndarray(e.tensor_proto)))
  return out


def interrupted_run(model_dir, steps, checkpoint_every, n, rng, log_dir, say):
  """Runs and interrupts until `n` interruptions happened, then runs to the end."""
  events = []
  attempt = 0
  while True:
    attempt += 1
    log_path = log_dir / f'attempt_{attempt:02d}.log'
    proc, log = _start(_command(model_dir, steps, checkpoint_every), log_path)
    t0 = time.monotonic()
    plan = None
    if len(events) < n:
      kind = rng.choice(['startup', 'step', 'step', 'after_save', 'after_save'])
      sig = rng.choice([signal.SIGKILL, signal.SIGTERM])
      plan = {'kind': kind, 'signal': signal.Signals(sig).name,
              'delay': rng.uniform(1.0, 12.0) if kind == 'startup' else rng.uniform(0.0, 0.3),
              'after_steps': rng.randint(1, 2 * checkpoint_every)}
    first_step = None
    sent = False
    while proc.poll() is None:
      time.sleep(0.02)
      if plan is None or sent:
        continue
      logged = _steps_logged(log_path)
      if logged and first_step is None:
        first_step = logged[0]
      if plan['kind'] == 'startup':
        fire = not logged and time.monotonic() - t0 > plan['delay']
        if logged:  # started faster than the delay: interrupt at once instead
          fire = True
      elif plan['kind'] == 'step':
        fire = bool(logged) and logged[-1] >= first_step + plan['after_steps'] - 1
      else:  # just after a checkpoint step was logged: its save is being written
        fire = bool(logged) and logged[-1] >= first_step + plan['after_steps'] - 1 and \
            logged[-1] % checkpoint_every == 0
      if fire:
        time.sleep(plan['delay'] if plan['kind'] != 'startup' else 0)
        if proc.poll() is None:
          proc.send_signal(getattr(signal, plan['signal']))
          sent = True
    code = proc.wait()
    log.close()
    logged = _steps_logged(log_path)
    event = {'attempt': attempt, 'exit': code, 'steps': [logged[0], logged[-1]] if logged else None,
             'secs': round(time.monotonic() - t0, 1), **(plan or {})}
    say(json.dumps(event))
    if code == 0:
      if len(events) < n:
        raise RuntimeError(f'the run finished after {len(events)} of {n} interruptions: raise --steps')
      return events, attempt
    if sent:
      events.append(event)
    if code not in (0, 75, -9, -15, 137, 143) or attempt > 3 * n + 5:
      raise RuntimeError(f'attempt {attempt} exited {code}: see {log_path}')


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--interruptions', type=int, default=20)
  p.add_argument('--steps', type=int, default=200)
  p.add_argument('--checkpoint_every', type=int, default=4)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--work_dir', help='default: a new temporary folder (removed when all matched)')
  args = p.parse_args(argv)
  work = pathlib.Path(args.work_dir or tempfile.mkdtemp(prefix='soak_resume_'))
  work.mkdir(parents=True, exist_ok=True)
  say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
  t0 = time.monotonic()
  straight_log = work / 'straight.log'
  proc, log = _start(_command(work / 'straight', args.steps, args.checkpoint_every), straight_log)
  if proc.wait() != 0:
    raise RuntimeError(f'the uninterrupted run failed: see {straight_log}')
  log.close()
  straight_secs = time.monotonic() - t0
  events, attempts = interrupted_run(work / 'soaked', args.steps, args.checkpoint_every,
                                     args.interruptions, random.Random(args.seed), work, say)
  ref = tb_losses(work / 'straight')
  got = tb_losses(work / 'soaked')
  missing = sorted(set(ref) - set(got))
  differing = sorted(s for s, vals in got.items() if any(v != ref[s][0] for v in vals))
  relogged = sum(len(v) - 1 for v in got.values())
  result = {
      'interruptions': len(events), 'attempts': attempts, 'train_steps': args.steps,
      'checkpoint_every': args.checkpoint_every, 'seed': args.seed,
      'by_signal': {s: sum(e['signal'] == s for e in events) for s in ('SIGKILL', 'SIGTERM')},
      'by_moment': {k: sum(e['kind'] == k for e in events) for k in ('startup', 'step', 'after_save')},
      'exit_codes': sorted({e['exit'] for e in events}),
      'steps_checked': len(got), 'steps_logged_more_than_once': relogged,
      'missing_steps': missing, 'differing_steps': differing,
      'straight_run_secs': round(straight_secs, 1), 'total_secs': round(time.monotonic() - t0, 1),
      'work_dir': str(work),
  }
  ok = not missing and not differing and len(ref) == args.steps
  print(json.dumps(result))
  if ok and not args.work_dir:
    shutil.rmtree(work, ignore_errors=True)
  return 0 if ok else 1


if __name__ == '__main__':
  sys.exit(main())
