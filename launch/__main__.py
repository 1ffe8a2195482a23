"""One launcher: `python -m launch BACKEND [options] -- <t5x_like.train arguments>`.

    local      N processes x D CPU devices on this machine (launch/local.py)
    tpu        Cloud TPU VMs / queued resources, one or more slices (launch/tpu.py)
    slurm      an sbatch script running the train command under srun (launch/slurm.py)
    gke        a JobSet manifest applied with kubectl (launch/gke.py)
    preflight  compile the real train step for a TPU topology or GPU node set, on this CPU
               (launch/preflight.py; its options and --gin_file/--gin.* come without `--`)

Before anything is created or submitted, every backend parses the run's gin config here, as the
preflight does (no data read, nothing compiled): a missing gin file or a misspelt binding is one line
and exit 2, not a job that fails after its pod or nodes came up (--no_config_check skips it, for gin
files that only the cluster has). Every backend takes --dry_run (print exactly what would run; run
nothing) and --output FILE (also write it there). Jobs are restarted only on the trainer's
restartable exit codes (t5x_like/exit_codes.py), at most --max_restarts times. docs/LAUNCH.md has
the details.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import gin

from launch import child_processes
from launch import command
from launch import gke
from launch import preflight
from launch import restarts
from launch import slurm
from launch import tpu
from t5x_like import exit_codes
from t5x_like import train as train_lib

BACKENDS = ('local', 'tpu', 'slurm', 'gke')


def _add_local_args(p) -> None:
  p.add_argument('--num_processes', type=int, default=1)
  p.add_argument('--devices_per_process', type=int, default=4)
  p.add_argument('--log_dir')
  p.add_argument('--max_restarts', type=int, default=0)


def local_argv(args, train_args: Sequence[str]) -> list[str]:
  """One process: the train command itself; several: launch.local's localhost multi-process mode."""
  if args.num_processes == 1:
    return command.train_argv(train_args, python=sys.executable, distributed=False)
  out = [sys.executable, '-m', 'launch.local', f'--num_processes={args.num_processes}',
         f'--devices_per_process={args.devices_per_process}']
  if args.log_dir:
    out.append(f'--log_dir={args.log_dir}')
  return out + ['--', *train_args]


def _local_main(args, train_args, out=sys.stdout) -> int:
  argv = local_argv(args, train_args)
  if args.dry_run:
    command.write_output(command.join(argv), args.output, out)
    return 0
  # (Not subprocess.run: on the launcher's Ctrl-C it SIGKILLs the child 0.25 s later, cutting off
  # the save in flight; here the signal is passed on and the child stops as it would alone.)
  with child_processes.Children() as children:
    rc = restarts.run_with_restarts(lambda attempt: children.start(argv).wait(), args.max_restarts,
                                    stopped=lambda: children.stopping)
  try:
    children.raise_if_stopped(rc)
  except child_processes.Stopped as e:
    print(f'launch: {e}, passed on to the job; exit {e.exit_code} (the same command resumes it)',
          file=sys.stderr)
    return e.exit_code
  return rc


def make_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m launch', description=__doc__.split('\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split('\n', 2)[2])
  sub = p.add_subparsers(dest='backend', required=True)
  for name, add in (('local', _add_local_args), ('tpu', tpu.add_args), ('slurm', slurm.add_args),
                    ('gke', gke.add_args)):
    sp = sub.add_parser(name, help=f'{name} backend')
    add(sp)
    sp.add_argument('--dry_run', action='store_true', help='print what would run; run nothing')
    sp.add_argument('--no_config_check', action='store_true',
                    help="don't parse the run's gin config here first (for gin files only the "
                    'cluster has)')
    sp.add_argument('--output', help='also write the commands / script / manifest to this file')
  sub.add_parser('preflight', help='compile the train step for a target on this CPU',
                 add_help=False)
  return p


def main(argv: Optional[Sequence[str]] = None, out=sys.stdout) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv[:1] == ['preflight']:
    return preflight.main(argv[1:])
  ours, train_args = command.split_train_args(argv)
  args = make_parser().parse_args(ours)
  try:
    command.check_train_args(train_args)
    if not args.no_config_check:
      check_config(train_args)
    run = {'local': _local_main, 'tpu': tpu.main, 'slurm': slurm.main, 'gke': gke.main}
    return run[args.backend](args, train_args, out=out)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return exit_codes.CONFIG_ERROR


def check_config(train_args: Sequence[str]) -> None:
  """The run's gin config parses here (files found, every binding a real parameter, every macro set
  on the command line used), else ValueError in one line, before any job exists."""
  try:
    preflight.load_train_args(train_args)
  except (ValueError, TypeError, OSError) as e:
    raise ValueError(f'{train_lib._one_line(e)} (checked before launching: nothing started; '
                     '--no_config_check skips this, for gin files only the cluster has)') from None
  finally:
    gin.clear_config()


if __name__ == '__main__':
  sys.stdout.reconfigure(line_buffering=True)  # (to a log file too, each line as printed)
  sys.exit(main())
