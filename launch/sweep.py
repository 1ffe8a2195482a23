"""A grid of training runs, each in its own MODEL_DIR under SWEEP_DIR; then evaluation and the report.

    python -m launch.sweep SWEEP_DIR --gin_file=gin_configs/experiments/clone_ablation_cpu.gin \
        --train_steps=800 --grid p_clone=0.5,0.1 --grid seed=0,1 --add p_clone=0.0 \
        [--gin.BATCH_SIZE=16 ...] [--eval] [--report] [--jobs 1] [--dry_run]

- `--grid KEY=V1,V2,...` (repeatable): the cartesian product of all grids is the set of runs;
  `--add KEY=V,KEY=V` (repeatable): one more run (e.g. the monolingual baseline p_clone=0.0) -- it takes
  the first value of every grid key it doesn't name. A JSON `--grid_file` does the same:
  {"grid": {"p_clone": [0.5, 0.1], "seed": [0]}, "add": [{"p_clone": 0.0}]}.
- KEY is a gin macro of the experiment file, case-insensitive (p_clone -> P_CLONE; schedule 'none' ->
  None); run names are made of the keys, e.g. `p0.1-sched0.1_0.9-seed0`; the setting is the name
  without the seed (what the report averages over).
- Re-running skips finished runs (final checkpoint step == TRAIN_STEPS) and resumes unfinished ones
  (the trainer restores its latest checkpoint). Runs go one after another (`--jobs N`: N at a time);
  each logs to MODEL_DIR/train.log. `--launcher print` only prints the commands (for cluster launchers).
- `--export`: each run's data is exported once (`python -m tasks export`, to SWEEP_DIR/exports/<run>)
  and the run trains from it (DataConfig.export_dir): the training processes then run no tf.data
  pipeline and import neither TensorFlow nor seqio. A re-run reuses the exports.
- `--eval`: every finished run is evaluated (see t5x_like/eval.py) -- per-language perplexity at every
  checkpoint, and at the final step alignment, gradient alignment, MEXA (with the untrained-model
  control), and token efficiency against the sweep's monolingual runs (p_clone=0). Steps already
  evaluated are skipped. `--report` then writes SWEEP_DIR/report.md and its plots.
- The runs share one model, so they share jax's persistent compilation cache
  (`--compilation_cache_dir`, default SWEEP_DIR/compilation_cache, 'none' for no cache): a run that
  starts after another has compiled loads the train step, and evaluation loads its programs likewise.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import traceback
from typing import Optional, Sequence

import gin

from launch import child_processes
from t5x_like import compilation_cache
from t5x_like import eval as eval_lib
from t5x_like import report
from t5x_like import train
from t5x_like import writer_lock
from t5x_like.evaluation.results import checkpoint_steps

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORT = {'P_CLONE': 'p', 'SCHEDULE': 'sched', 'SEED': 'seed', 'FRAC_CLONE': 'frac'}


# --- the grid ----------------------------------------------------------------------------------------

# A second sweep on one dir rewrote the first one's sweep.json and exports under its running
# trainers, saw its runs refused by their writer locks, and evaluated the first one's runs again.
SWEEP = writer_lock.Writer(
    'SWEEP_DIR', 'sweep', 'two sweeps on one dir would export, train and evaluate the same runs '
    'over each other. Stop that one first (Ctrl-C or SIGTERM; the same command then goes on from '
    'where it stopped), or use another SWEEP_DIR')


def _value(v):
  """'0.1' -> 0.1, '3' -> 3, 'none' -> None, anything else stays a string."""
  if isinstance(v, str):
    if v.lower() in ('none', 'null'):
      return None
    for cast in (int, float):
      try:
        return cast(v)
      except ValueError:
        pass
  return v


def parse_assignments(text: str, multi: bool) -> dict:
  """'p_clone=0.5,0.1' (multi: a list per key) or 'p_clone=0.0,seed=1' (one value per key)."""
  out: dict = {}
  if multi:
    key, sep, values = text.partition('=')
    if not sep or not values:
      raise ValueError(f'--grid {text!r}: expected KEY=V1,V2,...')
    return {key.strip().upper(): [_value(v.strip()) for v in values.split(',')]}
  for part in text.split(','):
    key, sep, value = part.partition('=')
    if not sep:
      raise ValueError(f'--add {text!r}: expected KEY=V,KEY=V')
    out[key.strip().upper()] = _value(value.strip())
  return out


def expand(grid: dict, extra: Sequence[dict] = ()) -> list[dict]:
  """Runs (macro -> value dicts) of the product of `grid`, then the `extra` single runs."""
  keys = list(grid)
  runs = [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]
  for e in extra:
    e = {k.upper(): v for k, v in e.items()}
    run = {k: grid[k][0] for k in keys}
    run.update(e)
    runs.append(run)
  seen, unique = set(), []
  for r in runs:
    if r.get('SCHEDULE') is not None and 'P_CLONE' in r:
      # A schedule sets p_clone per stage; the task takes one or the other, so the product
      # p_clone x schedule collapses to one run per schedule.
      r['P_CLONE'] = None
    key = json.dumps(r, sort_keys=True)
    if key not in seen:
      seen.add(key)
      unique.append(r)
  return unique


def _fmt(v) -> str:
  return 'none' if v is None else str(v)


def run_name(settings: dict) -> str:
  """'p0.1-seed0', 'sched0.1_0.9-seed0' (keys set to None are left out)."""
  return '-'.join(f'{SHORT.get(k, k.lower())}{_fmt(v)}' for k, v in settings.items()
                  if v is not None) or 'default'


def setting_name(settings: dict) -> str:
  """The run name without its seed: runs that differ only in seed are one setting."""
  rest = {k: v for k, v in settings.items() if k != 'SEED'}
  return run_name(rest) if rest else 'default'


def gin_literal(v) -> str:
  if v is None:
    return 'None'
  if isinstance(v, (int, float)):
    return repr(v)
  return repr(str(v))


# --- one run ---------------------------------------------------------------------------------------

def is_finished(model_dir: str, train_steps: int) -> bool:
  steps = checkpoint_steps(model_dir)
  return bool(steps) and steps[-1] >= train_steps


def train_command(model_dir: str, gin_files: Sequence[str], settings: dict, train_steps: int,
                  overrides: Sequence[str]) -> list[str]:
  cmd = [sys.executable, '-m', 't5x_like.train']
  cmd += [f'--gin_file={f}' for f in gin_files]
  cmd += [f'--gin.MODEL_DIR={gin_literal(model_dir)}', f'--gin.TRAIN_STEPS={train_steps}']
  cmd += list(overrides)
  cmd += [f'--gin.{k}={gin_literal(v)}' for k, v in settings.items()]
  return cmd


@contextlib.contextmanager
def _parsed(gin_files: Sequence[str], bindings: Sequence[str]):
  gin.clear_config()
  try:
    # A run that reads an export leaves the task configurables unread: no seqio/TensorFlow here.
    train.parse_gin_importing_tasks_if_named(gin_files, bindings, [])
    yield
  finally:
    gin.clear_config()


def _query(selector: str):
  """A bound value (a macro's own value for a binding to one), or None where nothing is bound."""
  try:
    value = gin.query_parameter(selector)
  except (ValueError, KeyError):
    return None
  if isinstance(value, gin.config.ConfigurableReference) and str(value).startswith('%'):
    return _query(str(value))
  return value


def _validation_files() -> list:
  """The text the run is evaluated on (in a parsed config): the VALIDATION_FILES macro, or else the
  validation_files of the task builder its training data names (as cloned_captions.gin binds
  them)."""
  files = _query('%VALIDATION_FILES')
  if files is None:
    task = _query('train/DataConfig.mixture_or_task') or _query('DataConfig.mixture_or_task')
    if isinstance(task, gin.config.ConfigurableReference):
      files = _query(f'{task.selector}.validation_files')
  return [os.path.abspath(os.path.join(REPO_ROOT, f)) if not os.path.isabs(f) else f
          for f in files or []]


def run_info(model_dir: str, name: str, settings: dict, train_steps: int,
             gin_files: Sequence[str], overrides: Sequence[str],
             data_overrides: Sequence[str] = ()) -> dict:
  """What the evaluator and the report need to know about the run (MODEL_DIR/run.json), read from
  its gin config: parsing it here is what refuses a misspelt key or file before anything runs.
  `data_overrides` point the run at an export (`--export`)."""
  def bindings(flags):
    out = [o[len('--gin.'):].replace('=', ' = ', 1) for o in flags if o.startswith('--gin.')]
    out += [f'{k} = {gin_literal(v)}' for k, v in settings.items()]
    return out + [f'MODEL_DIR = {gin_literal(model_dir)}', f'TRAIN_STEPS = {train_steps}']
  with _parsed(gin_files, bindings([*overrides, *data_overrides])):
    macros = {n: _query(f'%{n}') for n in ('BATCH_SIZE', 'SEQUENCE_LENGTH', 'P_CLONE', 'SCHEDULE',
                                            'SEED', 'NUM_LANGUAGES')}
    validation_files = _validation_files()
  if not validation_files and data_overrides:
    # A run that reads an export leaves its task unread, and with it the files the task names: they
    # are read where the task is (with seqio, as for the export itself; without it, none are found).
    with contextlib.suppress(ImportError), _parsed(gin_files, bindings(overrides)):
      validation_files = _validation_files()
  info = {'name': name, 'setting': setting_name(settings), 'settings': settings,
          'train_steps': train_steps, 'gin_files': list(gin_files),
          'overrides': [*overrides, *data_overrides],
          'batch_size': macros['BATCH_SIZE'], 'sequence_length': macros['SEQUENCE_LENGTH'],
          'validation_files': validation_files,
          'p_clone': macros['P_CLONE'] or 0.0, 'schedule': macros['SCHEDULE'],
          'seed': macros['SEED'], 'num_languages': macros['NUM_LANGUAGES'],
          'monolingual': not (macros['P_CLONE'] or 0.0) and not macros['SCHEDULE']}
  return info


def write_run_info(model_dir: str, info: dict) -> None:
  os.makedirs(model_dir, exist_ok=True)
  with open(os.path.join(model_dir, 'run.json'), 'w') as f:
    json.dump(info, f, indent=1)


# --- the sweep -------------------------------------------------------------------------------------

def _launch(children, cmd, log_path, cores=None):
  log = open(log_path, 'a')
  log.write(f'\n=== {time.strftime("%Y-%m-%d %H:%M:%S")}: {shlex.join(cmd)}\n')
  log.flush()
  env = dict(os.environ)
  env['PYTHONPATH'] = REPO_ROOT + os.pathsep + env.get('PYTHONPATH', '')
  proc = children.start(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)
  if cores:
    # Pinned runs don't fight over the same cores (a tiny model gains little from a second thread).
    # Set from here right after the start, not in a preexec_fn (a fork hook in a process that already
    # runs JAX threads can deadlock); the child's threads start later, during its imports, and inherit it.
    try:
      os.sched_setaffinity(proc.pid, cores)
    except OSError:
      pass
  return proc, log


def _core_slots(jobs: int) -> list:
  """With several jobs, each job slot gets its own share of this process's cores."""
  if jobs <= 1 or not hasattr(os, 'sched_getaffinity'):
    return [None] * max(jobs, 1)
  cores = sorted(os.sched_getaffinity(0))
  if len(cores) < jobs:
    return [None] * jobs
  return [set(cores[i::jobs]) for i in range(jobs)]


def _wait_for_setup(proc, log_path: str, offset: int, timeout_s: float = 1800) -> None:
  """Until the trainer's log shows its set-up line ('model: ...') or the process ends."""
  t0 = time.perf_counter()
  while proc.poll() is None and time.perf_counter() - t0 < timeout_s:
    with open(log_path, errors='replace') as f:
      f.seek(offset)
      if '\nmodel: ' in f.read():
        return
    time.sleep(0.5)


def train_all(runs: list[dict], jobs: int, say=print) -> dict[str, int]:
  """Runs the pending trainings, `jobs` at a time; returns {name: exit status}. A signal to the sweep
  (Ctrl-C, SIGTERM) is passed on to the runs in progress (launch/child_processes.py), none is
  started after it, and once they have stopped child_processes.Stopped is raised."""
  with child_processes.Children() as children:
    status = _train_all(children, runs, jobs, say)
  children.raise_if_stopped()
  return status


def _train_all(children, runs, jobs, say):
  status, pending, running = {}, list(runs), []
  free = _core_slots(jobs)
  while (pending and not children.stopping) or running:
    while pending and free and not children.stopping:
      r = pending.pop(0)
      slot = free.pop(0)
      say(f'[sweep] training {r["name"]} -> {r["model_dir"]}/train.log')
      log_path = os.path.join(r['model_dir'], 'train.log')
      start = os.path.getsize(log_path) if os.path.exists(log_path) else 0
      proc, log = _launch(children, r['cmd'], log_path, slot)
      running.append((r, proc, log, time.perf_counter(), slot, start))
      if jobs > 1 and len(status) + len(running) == 1:
        # The first run builds what runs share (the sentencepiece cache) before others start:
        # two processes training the same cached vocabulary would race on its files.
        _wait_for_setup(proc, log_path, start)
    time.sleep(0.5)
    for item in list(running):
      r, proc, log, t0, slot, start = item
      if proc.poll() is not None:
        log.close()
        running.remove(item)
        free.append(slot)
        status[r['name']] = proc.returncode
        verdict = ('done' if proc.returncode == 0 else
                   f'stopped (exit {proc.returncode})' if children.stopping else
                   f'FAILED (exit {proc.returncode}; train.log ends: {_last_line(log.name, start)})')
        say(f'[sweep] {r["name"]}: {verdict} in {time.perf_counter() - t0:.0f}s')
  return status


def _last_line(log_path: str, start: int, limit: int = 400) -> str:
  """The last line a run wrote to its log since `start` (a trainer's one-line error, or the last line
  of a traceback), so that the sweep's console says why it failed."""
  with open(log_path, errors='replace') as f:
    f.seek(start)
    lines = [line.strip() for line in f.read().splitlines() if line.strip()]
  last = lines[-1] if lines else '(nothing)'
  return last if len(last) <= limit else last[:limit] + '...'


def evaluate_runs(runs: list[dict], eval_flags: Sequence[str], say=print) -> int:
  """Monolingual runs first (the others' token efficiency is fitted on them), each through
  t5x_like.eval in this process. Returns the number of failures."""
  baselines = [r['model_dir'] for r in runs if r['info'].get('monolingual')]
  failures, teff_left_out = 0, False
  for r in sorted(runs, key=lambda r: not r['info'].get('monolingual')):
    d = r['model_dir']
    say(f'[sweep] evaluating {r["name"]}')
    final = ['mexa']  # (ppl at every step is done by now)
    if (r['info'].get('num_languages') or 2) > 1:
      final += ['align', 'grad']
    try:
      rc = eval_lib.main(['--model_dir', d, '--all_steps', '--skip_done', '--metrics', 'ppl',
                          *eval_flags])
      if baselines:  # (evaluated first: their perplexities are the fit's points)
        try:
          eval_lib.teff_fit(baselines)
          final.append('teff')
        except ValueError as e:  # too few checkpoints: the other metrics are still wanted
          if not teff_left_out:
            say(f'[sweep] note: token efficiency is left out of this sweep: {e}')
          teff_left_out = True
      rc = rc or eval_lib.main(['--model_dir', d, '--skip_done', '--init_control', '--metrics',
                                ','.join(final),
                                *[a for b in baselines for a in ('--baseline_dir', b)],
                                *eval_flags])
    except Exception as e:  # one broken run must not cost the others their evaluation
      traceback.print_exc()
      say(f'[sweep] evaluating {r["name"]} FAILED: {type(e).__name__}: {e}')
      rc = 1
    failures += rc != 0
  return failures


def make_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m launch.sweep', description=__doc__.split('\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('sweep_dir')
  p.add_argument('--gin_file', action='append', default=[], required=True)
  p.add_argument('--train_steps', type=int, required=True)
  p.add_argument('--grid', action='append', default=[], help='KEY=V1,V2,... (repeatable)')
  p.add_argument('--add', action='append', default=[], help='KEY=V,KEY=V: one more run (repeatable)')
  p.add_argument('--grid_file', help='JSON {"grid": {...}, "add": [{...}]}')
  p.add_argument('--jobs', type=int, default=1,
                 help='local runs at a time (each pinned to its share of the cores)')
  p.add_argument('--launcher', choices=('local', 'print'), default='local')
  p.add_argument('--export', action='store_true',
                 help="export each run's data once and train from the export (no TensorFlow in training)")
  p.add_argument('--export_only', action='store_true',
                 help='with --export: export every run\'s data, then stop (e.g. to carry it to a '
                      'machine without TensorFlow, as scripts/gpu_bundle.sh does)')
  p.add_argument('--eval', action='store_true', help='evaluate every finished run')
  p.add_argument('--eval_flags', default='', help='extra flags for t5x_like.eval, one string')
  p.add_argument('--report', action='store_true', help='write SWEEP_DIR/report.md and plots')
  p.add_argument('--dry_run', action='store_true', help='list the runs and their state, run nothing')
  p.add_argument('--compilation_cache_dir',
                 help="jax's persistent compilation cache that every run's training and evaluation "
                 "use (the runs share one model, so all but the first load its compiled steps; "
                 "default SWEEP_DIR/compilation_cache; 'none': no cache)")
  return p


def compilation_cache_dir(args) -> Optional[str]:
  if args.compilation_cache_dir is None:
    return os.path.join(os.path.abspath(args.sweep_dir), 'compilation_cache')
  if not args.compilation_cache_dir or compilation_cache.is_off(args.compilation_cache_dir):
    return None
  return args.compilation_cache_dir


def plan(args, overrides: Sequence[str]) -> list[dict]:
  grid: dict = {}
  extra: list = []
  if args.grid_file:
    with open(args.grid_file) as f:
      spec = json.load(f)
    grid.update({k.upper(): v if isinstance(v, list) else [v] for k, v in spec.get('grid', {}).items()})
    extra.extend(spec.get('add', []))
  for g in args.grid:
    grid.update(parse_assignments(g, multi=True))
  extra.extend(parse_assignments(a, multi=False) for a in args.add)
  if not grid and not extra:
    grid = {'SEED': [0]}
  cache = compilation_cache_dir(args)
  runs = []
  for settings in expand(grid, extra):
    name = run_name(settings)
    model_dir = os.path.join(os.path.abspath(args.sweep_dir), name)
    run_overrides, data_overrides = list(overrides), []
    export_dir = None
    if getattr(args, 'export', False):
      export_dir = os.path.join(os.path.abspath(args.sweep_dir), 'exports', name)
      # (the scoped ones too: a file that names its train or eval task in a scope, as
      # cloned_captions.gin does, would otherwise keep it over the unscoped None)
      data_overrides = [f'--gin.{scope}DataConfig.mixture_or_task=None'
                        for scope in ('', 'train/', 'eval/')]
      data_overrides.append(f'--gin.DataConfig.export_dir={gin_literal(export_dir)}')
      run_overrides += data_overrides
    cmd = train_command(model_dir, args.gin_file, settings, args.train_steps, run_overrides)
    if cache:
      cmd.append(f'--compilation_cache_dir={cache}')
    runs.append({'name': name, 'settings': settings, 'model_dir': model_dir,
                 'export_dir': export_dir, 'overrides': overrides, 'run_overrides': run_overrides,
                 'data_overrides': data_overrides,
                 'cmd': cmd})
  return runs


def export_runs(runs: list[dict], gin_files: Sequence[str], train_steps: int, say=print) -> None:
  """Each run's data, exported once (python -m tasks export) where it is not yet."""
  for r in runs:
    if os.path.exists(os.path.join(r['export_dir'], 'train', 'meta.json')):
      continue
    from tasks import __main__ as tasks_main  # seqio: only when something is left to export
    say(f'[sweep] exporting the data of {r["name"]} -> {r["export_dir"]}')
    argv = ['export', *[f'--gin_file={f}' for f in gin_files], '--output', r['export_dir'],
            f'--gin.MODEL_DIR={gin_literal(r["model_dir"])}', f'--gin.TRAIN_STEPS={train_steps}',
            *r['overrides'], *[f'--gin.{k}={gin_literal(v)}' for k, v in r['settings'].items()]]
    if tasks_main.main(argv) != 0:
      raise ValueError(f'exporting the data of {r["name"]} failed (see above)')


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  overrides = [a for a in argv if a.startswith('--gin.')]
  args = make_parser().parse_args([a for a in argv if not a.startswith('--gin.')])
  if args.export_only and not args.export:
    print('error: --export_only needs --export', file=sys.stderr)
    return 2
  try:
    runs = plan(args, overrides)
  except (ValueError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  try:
    for r in runs:  # before anything is written or trained, dry runs included: a misspelt key or
      # gin file fails here, for every run at once
      r['info'] = run_info(r['model_dir'], r['name'], r['settings'], args.train_steps,
                           args.gin_file, r['overrides'], r['data_overrides'])
  except Exception as e:  # gin's errors are long; the first line says which binding
    print(f'error: {str(e).strip().splitlines()[0]}', file=sys.stderr)
    return 2
  eval_files_given = any(f == '--eval_files' or f.startswith('--eval_files=')
                         for f in shlex.split(args.eval_flags))
  no_text = [r['name'] for r in runs if not r['info']['validation_files']]
  if args.eval and no_text and not eval_files_given:  # (found before training, not after it)
    print(f'error: --eval: no evaluation text for {", ".join(no_text)}: the gin config defines no '
          'VALIDATION_FILES macro and its training task binds no validation_files; define one, or '
          "pass --eval_flags='--eval_files FILE ...'", file=sys.stderr)
    return 2
  lock = None
  if not (args.dry_run or args.launcher == 'print'):  # (those only read)
    try:
      lock = writer_lock.acquire(args.sweep_dir, writer=SWEEP)  # (makes the folder)
    except writer_lock.ModelDirInUse as e:
      print(f'error: {e}', file=sys.stderr)
      return 2
  try:
    return _run(args, argv, runs)
  finally:
    if lock is not None:
      lock.close()


def _run(args, argv: list, runs: list[dict]) -> int:
  """The sweep itself, under the sweep dir's lock: run files, exports, training, evaluation, report."""
  todo = []
  for r in runs:
    done = is_finished(r['model_dir'], args.train_steps)
    steps = checkpoint_steps(r['model_dir'])
    state = 'finished' if done else (f'resume from step {steps[-1]}' if steps else 'new')
    print(f'[sweep] {r["name"]}: {state}')
    if args.launcher == 'print':
      print('  ' + shlex.join(r['cmd']))
    if not done:
      todo.append(r)
  if args.dry_run or args.launcher == 'print':
    return 0
  for r in runs:
    write_run_info(r['model_dir'], r['info'])
  with open(os.path.join(args.sweep_dir, 'sweep.json'), 'w') as f:
    json.dump({'argv': argv, 'runs': [r['name'] for r in runs]}, f, indent=1)
  if args.export:
    try:
      export_runs(todo, args.gin_file, args.train_steps)
    except ValueError as e:
      print(f'error: {e}', file=sys.stderr)
      return 2
    if args.export_only:
      return 0
  try:
    status = train_all(todo, args.jobs)
    failed = [n for n, rc in status.items() if rc != 0]
    finished = [r for r in runs if is_finished(r['model_dir'], args.train_steps)]
    if args.eval and finished:
      cache = compilation_cache_dir(args)
      eval_flags = shlex.split(args.eval_flags) + ([f'--compilation_cache_dir={cache}'] if cache
                                                   else [])
      failed += ['eval'] * evaluate_runs(finished, eval_flags)
    if args.report:
      report.main([args.sweep_dir])
  except (child_processes.Stopped, KeyboardInterrupt) as e:
    stopped = e if isinstance(e, child_processes.Stopped) else child_processes.Stopped(signal.SIGINT)
    print(f'[sweep] {stopped}; the same command goes on from there: finished runs and evaluated '
          f'steps are kept, the others resume from their last checkpoint (exit {stopped.exit_code})',
          file=sys.stderr, flush=True)
    return stopped.exit_code
  if failed:
    print(f'[sweep] failures: {failed}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.stdout.reconfigure(line_buffering=True)  # (to a log file too, each line as printed)
  sys.exit(main())
