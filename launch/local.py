"""Multi-process training on one machine: N processes x D CPU devices, gloo collectives over localhost.

    python -m launch.local --num_processes 2 --devices_per_process 4 -- \
        --gin_file=gin_configs/examples/tiny_decoder_pretrain.gin --gin.MODEL_DIR="'/tmp/mh'" \
        --gin.TRAIN_STEPS=20 --gin.MeshConfig.fsdp=4

It exercises exactly the multi-host code path of a TPU pod or GPU cluster (jax.distributed, per-host data
shards, per-host iterator checkpoints, Orbax writing from every process). Output of process 0 is
printed; every process's output goes to --log_dir (default: a new temporary folder, named at start).
When any process fails, the others are stopped (SIGTERM, then SIGKILL after 10 s) and the launcher
exits with the first failure's status (t5x_like/exit_codes.py). The processes run in sessions of their
own, and a signal to the launcher is passed on to every process (launch/child_processes.py): SIGTERM
or SIGHUP (preemption: each saves the same step and exits 75, as does the launcher) and SIGINT
(Ctrl-C: all stop together at the next log step and exit 130, as does the launcher; a Ctrl-C that
reached one process alone stops them so too).

On real clusters the same `python -m t5x_like.train` command runs once per host: on TPU VMs with
`gcloud compute tpus tpu-vm ssh NAME --worker=all --command="... --distributed"`, under SLURM with
`srun ... python -m t5x_like.train ... --distributed` (jax reads the SLURM environment).
"""
from __future__ import annotations

import argparse
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from launch import child_processes
from t5x_like import exit_codes

WORKER = ('import sys, jax; jax.config.update("jax_cpu_collectives_implementation", "gloo"); '
          'from t5x_like import train; sys.exit(train.main(sys.argv[1:]))')


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class ProcessesFailed(RuntimeError):
  """One process failed (`.process`, `.returncode`: the first to fail, the cause); the others were
  stopped."""

  def __init__(self, msg: str, process: int, returncode: int):
    super().__init__(msg)
    self.process, self.returncode = process, returncode


def _stop(procs, grace: float = 10.0):
  """SIGTERM (each process saves at a preemption point if it can), then SIGKILL after `grace`."""
  for p in procs:
    if p.poll() is None:
      p.terminate()
  deadline = time.monotonic() + grace
  while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
    time.sleep(0.2)
  for p in procs:
    if p.poll() is None:
      p.kill()


def _exit_queue(procs) -> queue.Queue:
  """One waiter thread per process puts (index, exit code) on the queue the moment it exits, so the
  queue's order is the order of the exits. Polling could not tell it: a killed peer and the survivor
  that aborts on the broken collective a few milliseconds later fall in the same poll interval."""
  exits = queue.Queue()
  for i, p in enumerate(procs):
    threading.Thread(target=lambda i=i, p=p: exits.put((i, p.wait())), daemon=True,
                     name=f'wait-process-{i}').start()
  return exits


def _wait_all(procs, timeout, say=lambda msg: None, stopping=lambda: False, grace: float = 60.0):
  """Waits for every process; when one fails (or the timeout passes), stops the others, which would
  otherwise wait on it inside a collective. Once `stopping()` (the launcher passed a signal on), or
  once a process exited interrupted (130: the others stop with it), any exit is expected, and those
  still running after `grace` seconds are stopped. Returns (codes, index of the first to fail or
  None)."""
  deadline = None if timeout is None else time.monotonic() + timeout
  exits, running, first_failed, stop_by = _exit_queue(procs), len(procs), None, None
  interrupted_first = None
  while running:
    if stop_by is None and stopping():
      stop_by = time.monotonic() + grace
    # (in short waits: a signal's handler runs between them, and the grace starts then)
    try:
      i, code = exits.get(timeout=0.5)
    except queue.Empty:
      now = time.monotonic()
      if stop_by is not None and now > stop_by:
        after = ('the signal' if interrupted_first is None else
                 f'process {interrupted_first} was interrupted')
        say(f'{grace:g} s after {after}, {running} process(es) still run: stopping them')
        _stop(procs)
        break
      if deadline is not None and now > deadline:
        say(f'timeout of {timeout:g} s: stopping all processes')
        _stop(procs)
        break
      continue
    running -= 1
    # A preempted process (75) is not a failure: the others stop at the same step and commit it. Nor
    # is an interrupted one (130): a Ctrl-C to any process stops all at one step
    # (t5x_like/interrupts.py), and those that have not after `grace` are stopped. Nor is any exit
    # once the job was told to stop (a peer of the first to leave may abort).
    if code == exit_codes.INTERRUPTED and stop_by is None:
      stop_by, interrupted_first = time.monotonic() + grace, i
    elif code not in (0, exit_codes.PREEMPTED) and not stopping() and stop_by is None:
      first_failed = i
      say(f'process {i} exited with {code}: stopping the others')
      _stop(procs)
      break
  codes = [p.wait() for p in procs]
  if first_failed is None and interrupted_first is not None and not stopping() and any(
      c != exit_codes.INTERRUPTED for c in codes):
    first_failed = interrupted_first  # (the others did not stop with it: it left alone)
  return codes, first_failed


def launch(train_args, num_processes: int, devices_per_process: int, log_dir: str | None = None,
           stream=sys.stdout, timeout: float | None = None) -> list[str]:
  """Runs the processes to completion; returns each one's combined output. Raises ProcessesFailed
  naming the first process to fail, its exit status and the log folder; child_processes.Stopped when
  the launcher was told to stop (SIGINT, SIGTERM, SIGHUP: passed on to every process) and they have
  stopped."""
  port = free_port()
  env = dict(os.environ, PYTHONUNBUFFERED='1',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices_per_process}')
  log_dir = log_dir or tempfile.mkdtemp(prefix='launch_local_')
  os.makedirs(log_dir, exist_ok=True)
  print(f'launch.local: {num_processes} processes x {devices_per_process} devices; logs in '
        f'{log_dir}/process_*.log', file=sys.stderr, flush=True)
  logs = []
  with child_processes.Children() as children:
    for pid in range(num_processes):
      log = open(os.path.join(log_dir, f'process_{pid}.log'), 'w+')
      logs.append(log)
      children.start([sys.executable, '-c', WORKER, *train_args,
                      f'--coordinator_address=127.0.0.1:{port}', f'--num_processes={num_processes}',
                      f'--process_id={pid}'],
                     env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    codes, first = _wait_all(children.procs, timeout, stopping=lambda: children.stopping,
                             say=lambda m: print(f'launch.local: {m}', file=sys.stderr, flush=True))
  outs = []
  for log in logs:
    log.seek(0)
    outs.append(log.read())
    log.close()
  if stream is not None:
    stream.write(outs[0])
  if first is None and children.stopping:
    # After SIGTERM: 75, unless a process could not save (e.g. 5, a full disk: no restart then).
    children.raise_if_stopped(next((c for c in codes if c not in (0, exit_codes.PREEMPTED)),
                                   exit_codes.PREEMPTED))
  if first is None and set(codes) == {exit_codes.INTERRUPTED}:  # (a Ctrl-C to one process)
    raise child_processes.Stopped(signal.SIGINT)
  if first is None and any(codes):
    first = next(i for i, c in enumerate(codes) if c)
  if first is not None:
    code = codes[first]
    raise ProcessesFailed(
        f'process {first} failed first (exit {code}; all: {codes}); logs in {log_dir}:\n' +
        outs[first][-3000:], first, 128 - code if code < 0 else code)
  return outs


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog='python -m launch.local', description=__doc__.split('\n')[0])
  p.add_argument('--num_processes', type=int, default=2)
  p.add_argument('--devices_per_process', type=int, default=4)
  p.add_argument('--log_dir')
  p.add_argument('train_args', nargs=argparse.REMAINDER, help='after --: arguments of t5x_like.train')
  args = p.parse_args(argv)
  train_args = args.train_args[1:] if args.train_args[:1] == ['--'] else args.train_args
  try:
    launch(train_args, args.num_processes, args.devices_per_process, args.log_dir)
  except ProcessesFailed as e:
    print(f'error: {e}', file=sys.stderr)
    return e.returncode  # the first failure's exit status: a launcher decides on it (exit_codes)
  except child_processes.Stopped as e:
    if e.signum == signal.SIGINT:
      print('launch.local: interrupted (Ctrl-C); where each process stopped is at the end of its log',
            file=sys.stderr)
    else:
      print(f'launch.local: {e}, passed on to every process; where each stopped is at the end of its '
            f'log (exit {e.exit_code})', file=sys.stderr)
    return e.exit_code
  return 0


if __name__ == '__main__':
  sys.stdout.reconfigure(line_buffering=True)  # (to a log file too, each line as printed)
  sys.exit(main())
