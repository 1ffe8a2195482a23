"""Cloud TPU VMs: create or reuse a TPU VM (or a queued resource; several slices over DCN), put the code
on every worker, install it, run the train command on all workers with `--distributed`, stream worker
0's log, and restart on the trainer's restartable exit codes.

    python -m launch tpu --name my-run --tpu v5p-256 --zone us-east5-a --project my-proj --spot \
        [--num_slices 2] [--dry_run [--output FILE]] -- --gin_file=... --gin.MODEL_DIR="'gs://b/run'"

Every step is a `gcloud` command; --dry_run prints them and runs nothing. The job runs in the
background on each worker (`~/t5x_like_run/train.log`, exit status in `~/t5x_like_run/exit_code`), so a
dropped ssh connection does not stop it; the launcher follows worker 0 until the status appears.
"""
from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import time
from typing import Optional, Sequence

from launch import command
from launch import restarts
from launch import targets as targets_lib
from t5x_like import exit_codes

RUN_DIR = '~/t5x_like_run'
CODE_DIR = '~/t5x_like'
DEFAULT_RUNTIME = {'v4': 'tpu-ubuntu2204-base', 'v5p': 'v2-alpha-tpuv5', 'v5e': 'v2-alpha-tpuv5-lite',
                   'v6e': 'v2-alpha-tpuv6e'}
MEGASCALE_PORT = 8080


@dataclasses.dataclass
class Step:
  """One command. `check`: when it succeeds the step is already done (create or reuse); `until`: poll
  the command until its output is this (queued resources becoming ACTIVE)."""
  argv: list[str]
  what: str
  check: Optional[list[str]] = None
  until: Optional[str] = None

  def render(self) -> str:
    line = command.join(self.argv)
    if self.check:
      line = f'{command.join(self.check)} >/dev/null 2>&1 || {line}'
    if self.until:
      line = (f'until [ "$({line})" = {self.until} ]; do sleep 30; done')
    return f'# {self.what}\n{line}'


@dataclasses.dataclass
class Plan:
  setup: list[Step]     # run once (and again before a restart: a preempted TPU may be gone)
  run: list[Step]       # start the job on every worker
  follow: Step          # stream worker 0's log; exits with the job's exit code

  def render(self) -> str:
    return '\n'.join(s.render() for s in self.setup + self.run + [self.follow]) + '\n'


def _gcloud(*args, zone: str, project: Optional[str]) -> list[str]:
  out = ['gcloud', 'compute', 'tpus', *args, f'--zone={zone}']
  return out + ([f'--project={project}'] if project else [])


def node_names(name: str, num_slices: int, queued: bool) -> list[str]:
  # queued-resources --node-prefix NAME names the nodes NAME-0, NAME-1, ...
  return [f'{name}-{i}' for i in range(num_slices)] if queued and num_slices > 1 else [name]


def remote_run_command(train_args: Sequence[str], *, slice_id: int, num_slices: int,
                       coordinator_node: str, zone: str, project: Optional[str],
                       env: Sequence[str] = ()) -> str:
  """What each worker's shell runs: the train command in the background, its exit status kept."""
  envs = [command.env_assignment(e) for e in env]
  if num_slices > 1:
    # Multi-slice: every worker finds slice 0 / worker 0 (the DCN coordinator) by asking gcloud.
    describe = _gcloud('tpu-vm', 'describe', coordinator_node, zone=zone, project=project)
    describe.append('--format=value(networkEndpoints[0].ipAddress)')
    envs += [f'MEGASCALE_COORDINATOR_ADDRESS="$({command.join(describe)}):{MEGASCALE_PORT}"',
             f'MEGASCALE_NUM_SLICES={num_slices}', f'MEGASCALE_SLICE_ID={slice_id}',
             f'MEGASCALE_PORT={MEGASCALE_PORT}']
  train = command.join(command.train_argv(train_args, python='.venv/bin/python'))
  prefix = ' '.join(envs) + ' ' if envs else ''
  job = f'{prefix}{train} >> {RUN_DIR}/train.log 2>&1; echo $? > {RUN_DIR}/exit_code'
  # Its own session, so that a restart can stop every process of the previous attempt.
  return (f'mkdir -p {RUN_DIR} && cd {CODE_DIR} && '
          f'{{ [ -f {RUN_DIR}/pid ] && kill -- -$(cat {RUN_DIR}/pid) 2>/dev/null; '
          f'rm -f {RUN_DIR}/exit_code; true; }} && '
          f'setsid bash -c {command.join([job])} > /dev/null 2>&1 < /dev/null & '
          f'echo $! > {RUN_DIR}/pid')


FOLLOW = (f'touch {RUN_DIR}/train.log; tail -n 0 -F {RUN_DIR}/train.log & t=$!; '
          f'while [ ! -f {RUN_DIR}/exit_code ]; do sleep 10; done; sleep 2; kill $t; '
          f'exit $(cat {RUN_DIR}/exit_code)')


def plan(train_args: Sequence[str], *, name: str, tpu: str, zone: str, project: Optional[str],
         num_slices: int = 1, spot: bool = False, reserved: bool = False, queued: bool = False,
         runtime_version: Optional[str] = None, code_dir: str = command.REPO_ROOT,
         env: Sequence[str] = ()) -> Plan:
  target = targets_lib.parse(tpu)
  if target.kind != 'tpu':
    raise ValueError(f'--tpu {tpu}: not a TPU type (v5p-256, v6e-16, ...)')
  if target.num_slices > 1:
    raise ValueError(f'--tpu {tpu}: give one slice type and --num_slices {target.num_slices}')
  if spot and reserved:
    raise ValueError('--spot and --reserved exclude each other')
  queued = queued or num_slices > 1
  runtime = runtime_version or DEFAULT_RUNTIME[target.generation]
  pricing = ['--spot'] if spot else (['--reserved'] if reserved else [])
  if queued:
    nodes = (['--node-count', str(num_slices), '--node-prefix', name] if num_slices > 1
             else ['--node-id', name])
    create = Step(_gcloud('queued-resources', 'create', name, zone=zone, project=project)
                  + [f'--accelerator-type={target.accelerator_type}',
                     f'--runtime-version={runtime}', *nodes, *pricing],
                  f'create the queued resource (or reuse it): {num_slices} x {target.accelerator_type}',
                  check=_gcloud('queued-resources', 'describe', name, zone=zone, project=project))
    wait = Step(_gcloud('queued-resources', 'describe', name, zone=zone, project=project)
                + ['--format=value(state.state)'], 'wait until the slices are ACTIVE', until='ACTIVE')
    setup = [create, wait]
  else:
    setup = [Step(_gcloud('tpu-vm', 'create', name, zone=zone, project=project)
                  + [f'--accelerator-type={target.accelerator_type}', f'--version={runtime}',
                     *pricing],
                  f'create the TPU VM (or reuse it): {target.accelerator_type}',
                  check=_gcloud('tpu-vm', 'describe', name, zone=zone, project=project))]
  tarball = f'/tmp/{name}-code.tgz'
  setup.append(Step(['tar', '-czf', tarball, '--exclude=.venv', '--exclude=.git', '--exclude=runs',
                     '--exclude=__pycache__', '-C', code_dir, '.'], 'pack the code'))
  nodes = node_names(name, num_slices, queued)
  for node in nodes:
    setup.append(Step(_gcloud('tpu-vm', 'scp', tarball, f'{node}:~/code.tgz', zone=zone,
                              project=project) + ['--worker=all'],
                      f'copy it to every worker of {node}'))
    install = (f'mkdir -p {CODE_DIR} && tar -xzf ~/code.tgz -C {CODE_DIR} && cd {CODE_DIR} && '
               'bash scripts/setup_env.sh')
    setup.append(Step(_gcloud('tpu-vm', 'ssh', node, zone=zone, project=project)
                      + ['--worker=all', f'--command={install}'],
                      f'install on every worker of {node} (README set-up, with the tpu extra)'))
  run = []
  for i, node in enumerate(nodes):
    remote = remote_run_command(train_args, slice_id=i, num_slices=num_slices,
                                coordinator_node=nodes[0], zone=zone, project=project, env=env)
    run.append(Step(_gcloud('tpu-vm', 'ssh', node, zone=zone, project=project)
                    + ['--worker=all', f'--command={remote}'],
                    f'start the train command on every worker of {node}'))
  follow = Step(_gcloud('tpu-vm', 'ssh', nodes[0], zone=zone, project=project)
                + ['--worker=0', f'--command={FOLLOW}'],
                "stream worker 0's log until the job exits; exit with its code")
  return Plan(setup, run, follow)


def _run_step(step: Step, log) -> int:
  if step.check and subprocess.run(step.check, capture_output=True).returncode == 0:
    log(f'launch: {step.what}: already there')
    return 0
  log(f'launch: {step.what}')
  if step.until:
    while True:
      out = subprocess.run(step.argv, capture_output=True, text=True)
      if out.returncode:
        return out.returncode
      if out.stdout.strip() == step.until:
        return 0
      time.sleep(30)
  return subprocess.run(step.argv).returncode


def execute(p: Plan, max_restarts: int, log=print) -> int:
  def once(attempt: int) -> int:
    for step in p.setup + p.run:
      rc = _run_step(step, log)
      if rc:
        log(f'launch: {step.what} failed (exit {rc}): {command.join(step.argv)}')
        # The first set-up failing (quota, name, zone) will fail again; after a preemption the
        # slice may be coming back: try again.
        return exit_codes.CONFIG_ERROR if attempt == 0 else exit_codes.CRASHED
    return _run_step(p.follow, log)
  return restarts.run_with_restarts(once, max_restarts, log)


def add_args(p: argparse.ArgumentParser) -> None:
  p.add_argument('--name', required=True, help='TPU VM / queued resource name')
  p.add_argument('--tpu', required=True, help='accelerator type of one slice: v5p-256, v6e-16, ...')
  p.add_argument('--zone', required=True)
  p.add_argument('--project')
  p.add_argument('--num_slices', type=int, default=1, help='>1: multi-slice over DCN (queued resource)')
  p.add_argument('--spot', action='store_true')
  p.add_argument('--reserved', action='store_true')
  p.add_argument('--queued', action='store_true', help='create through a queued resource')
  p.add_argument('--runtime_version', help='TPU software version (default per generation)')
  p.add_argument('--env', action='append', default=[], help='KEY=VALUE for the train command')
  p.add_argument('--max_restarts', type=int, default=3)


def main(args, train_args: Sequence[str], out=sys.stdout) -> int:
  p = plan(train_args, name=args.name, tpu=args.tpu, zone=args.zone, project=args.project,
           num_slices=args.num_slices, spot=args.spot, reserved=args.reserved, queued=args.queued,
           runtime_version=args.runtime_version, env=args.env)
  if args.dry_run:
    command.write_output(p.render(), args.output, out)
    return 0
  return execute(p, args.max_restarts)
