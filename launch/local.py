"""Multi-process training on one machine: N processes x D CPU devices, gloo collectives over localhost.

    python -m launch.local --num_processes 2 --devices_per_process 4 -- \
        --gin_file=gin_configs/examples/tiny_decoder_pretrain.gin --gin.MODEL_DIR="'/tmp/mh'" \
        --gin.TRAIN_STEPS=20 --gin.MeshConfig.fsdp=4

It exercises exactly the multi-host code path of a TPU pod or GPU cluster (jax.distributed, per-host data
shards, per-host iterator checkpoints, Orbax writing from every process). Output of process 0 is
printed; the others' go to MODEL_DIR-independent logs in --log_dir. Exits non-zero if any process fails.

On real clusters the same `python -m t5x_like.train` command runs once per host: on TPU VMs with
`gcloud compute tpus tpu-vm ssh NAME --worker=all --command="... --distributed"`, under SLURM with
`srun ... python -m t5x_like.train ... --distributed` (jax reads the SLURM environment).
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time

WORKER = ('import sys, jax; jax.config.update("jax_cpu_collectives_implementation", "gloo"); '
          'from t5x_like import train; sys.exit(train.main(sys.argv[1:]))')


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _wait_all(procs, timeout):
  """Waits for every process; when one fails, stops the rest (they would wait on it forever)."""
  deadline = None if timeout is None else time.monotonic() + timeout
  while any(p.poll() is None for p in procs):
    failed = any(p.returncode not in (None, 0) for p in procs)
    late = deadline is not None and time.monotonic() > deadline
    if failed or late:
      for p in procs:
        if p.poll() is None:
          p.kill()
      break
    time.sleep(0.5)
  return [p.wait() for p in procs]


def launch(train_args, num_processes: int, devices_per_process: int, log_dir: str | None = None,
           stream=sys.stdout, timeout: float | None = None) -> list[str]:
  """Runs the processes to completion; returns each one's combined output."""
  port = free_port()
  env = dict(os.environ, PYTHONUNBUFFERED='1',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices_per_process}')
  log_dir = log_dir or tempfile.mkdtemp(prefix='launch_local_')
  procs, logs = [], []
  for pid in range(num_processes):
    log = open(os.path.join(log_dir, f'process_{pid}.log'), 'w+')
    args = [sys.executable, '-c', WORKER, *train_args, f'--coordinator_address=127.0.0.1:{port}',
            f'--num_processes={num_processes}', f'--process_id={pid}']
    procs.append(subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, text=True))
    logs.append(log)
  codes = _wait_all(procs, timeout)
  outs = []
  for log in logs:
    log.seek(0)
    outs.append(log.read())
    log.close()
  if stream is not None:
    stream.write(outs[0])
  failed = [i for i, c in enumerate(codes) if c]
  if failed:
    raise RuntimeError(f'processes {failed} failed (exit {[codes[i] for i in failed]}); logs in '
                       f'{log_dir}:\n' + outs[failed[0]][-3000:])
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
  except RuntimeError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
