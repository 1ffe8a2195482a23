"""Entry point: `python -m t5x_like.train --gin_file=... --gin.MODEL_DIR="'/tmp/run'" --gin.TRAIN_STEPS=100`.

Parses gin (several --gin_file, --gin_bindings, T5X-style --gin.NAME=VALUE overrides), validates what it
can before anything is compiled, then hands over to `trainer.fit`. Bad input during set-up (a misspelt
binding, a missing gin or data file, a batch that doesn't divide the mesh) ends with one line,
`error: ...`, and exit status 2; pass --traceback to see the whole stack. The exit status tells a
launcher whether to restart (t5x_like/exit_codes.py, docs/RELIABILITY.md): 0 finished, 1 crashed,
2 bad config/data/run dir, 3 diverged, 4 a peer was lost or no step finished in time, 5 no room for
a checkpoint (disk full or over quota), 75 preempted (checkpoint saved; resume me).

A config that reads an export (DataConfig.export_dir, docs/DATA.md) runs without TensorFlow: the
`tasks` package (seqio, TensorFlow) is imported only when the gin config needs it.
"""
from __future__ import annotations

import argparse
import logging
import importlib.util  # noqa: F401  (gin 0.5 looks up search paths through importlib.util)
import io
import os
import re
import signal
import sys
import threading
import tokenize
import traceback
from typing import Optional, Sequence

import gin
import jax

# Everything a gin file may name is registered on import: data (DataConfig), models (DecoderConfig,
# EncDecConfig), losses, optimizers, partitioning (MeshConfig), trainer (TrainerConfig). Task builders
# (the `tasks` package) bring TensorFlow and seqio, which a run reading an export does without: they
# are imported only when the gin config names one (parse_gin_importing_tasks_if_named).
from t5x_like import compilation_cache
from t5x_like import data  # noqa: F401
from t5x_like import exit_codes
from t5x_like import interrupts
from t5x_like import losses
from t5x_like import models  # noqa: F401
from t5x_like import optimizers
from t5x_like import partitioning
from t5x_like import preemption
from t5x_like import provenance
from t5x_like import storage_space
from t5x_like import trainer as trainer_lib

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETUP_ERRORS = (ValueError, TypeError, KeyError, OSError)
_MACRO = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*$')


# Configurables of the `tasks` package (task builders register under tasks.*; the vocabulary builder
# under its bare name).
_TASK_CONFIGURABLE = re.compile(r'^(tasks\.|sentencepiece_vocabulary$)')
_UNKNOWN = re.compile(r"No configurable matching (?:reference )?'@?([A-Za-z0-9_.]+)")


def parse_gin_importing_tasks_if_named(gin_files: Sequence[str], bindings: Sequence[str],
                                       search_paths: Sequence[str],
                                       skip_tasks: bool = False) -> list[str]:
  """parse_gin; the `tasks` package (seqio, TensorFlow) is imported only when the config needs it,
  so a config without seqio tasks runs without TensorFlow. When the command line points the data at
  an export (`DataConfig.export_dir`, with `DataConfig.mixture_or_task=None`), the experiment file's
  task configurables are left unread instead (always with skip_tasks: the preflight, which reads no
  data); returns their names."""
  reads_export = skip_tasks or any(re.match(r'^\s*([\w/]*/)?DataConfig\.export_dir\s*=', b) for b in bindings)
  skipped: list[str] = []
  while True:
    try:
      parse_gin(gin_files, bindings, search_paths, skip_unknown=skipped or False)
      return skipped
    except ValueError as e:
      m = _UNKNOWN.search(str(e))
      if not m or 'tasks' in sys.modules:
        raise
      if reads_export and _TASK_CONFIGURABLE.match(m.group(1)) and m.group(1) not in skipped:
        skipped.append(m.group(1))
        continue
      import tasks  # noqa: F401
      parse_gin(gin_files, bindings, search_paths)
      return []


@gin.configurable
def train(*, model_dir: str = gin.REQUIRED, train_steps: int = gin.REQUIRED, model=gin.REQUIRED,
          train_data=gin.REQUIRED, eval_data=None, optimizer=None, loss=None, mesh=None,
          trainer=None, init_params_from: Optional[str] = None, on_setup_done=None):
  """Everything a run is made of; each argument is a config object that gin builds.

  init_params_from: a model dir (e.g. one written by `t5x_like.convert from-hf`) whose latest
  parameters start this run when MODEL_DIR has no checkpoint yet; the optimizer starts fresh.
  """
  return trainer_lib.fit(
      model_dir=model_dir, train_steps=train_steps, model_config=model, train_data=train_data,
      eval_data=eval_data, optimizer_config=optimizer or optimizers.OptimizerConfig(),
      loss_config=loss or losses.LossConfig(), mesh_config=mesh or partitioning.MeshConfig(),
      trainer_config=trainer or trainer_lib.TrainerConfig(), init_params_from=init_params_from,
      on_setup_done=on_setup_done)


def split_gin_flags(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """`--gin.NAME=VALUE` -> gin binding `NAME = VALUE`; the rest is left to argparse."""
  bindings, rest = [], []
  for arg in argv:
    if arg.startswith('--gin.'):
      name, sep, value = arg[len('--gin.'):].partition('=')
      if not sep:
        raise ValueError(f'{arg}: expected --gin.NAME=VALUE')
      bindings.append(f'{name} = {value}')
    else:
      rest.append(arg)
  return bindings, rest


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str],
              skip_unknown=False):
  """Parses gin and checks that every macro set from the command line is used somewhere.

  Starts from an empty config, so an in-process call (tests, launchers, `python -m tasks show` before
  a run) sees only its own files and bindings, as a fresh process would.
  """
  gin.clear_config()
  for path in list(search_paths) + [REPO_ROOT, os.getcwd()]:
    gin.add_config_file_search_path(path)
  for f in gin_files:
    if not any(os.path.exists(os.path.join(p, f)) for p in ['', *search_paths, REPO_ROOT, os.getcwd()]):
      raise FileNotFoundError(f'gin file not found: {f}')
  try:
    gin.parse_config_files_and_bindings(list(gin_files), list(bindings), finalize_config=False,
                                       skip_unknown=skip_unknown)
  except SyntaxError as e:  # gin's, with the file (None for the bindings) and line it could not read
    raise ValueError(_gin_syntax_error(e)) from e
  except tokenize.TokenError as e:  # a binding whose bracket or quote is never closed
    raise ValueError(_gin_unclosed_binding(bindings, e)) from e
  text = gin.config_str()
  if skip_unknown:  # the skipped task bindings still use macros (P_CLONE, ...): read the files too
    text += ''.join(_gin_texts(gin_files, [*search_paths, REPO_ROOT, os.getcwd()]))
  for b in bindings:
    name = b.split('=', 1)[0].strip()
    if _MACRO.match(name) and not re.search(rf'%{name}\b', text):
      raise ValueError(f'gin macro {name} is set on the command line but no gin file uses %{name} '
                       '(misspelt?)')


def _gin_syntax_error(e: SyntaxError) -> str:
  line = (e.text or '').strip()
  reason = (e.msg or 'syntax error').rstrip('.')
  if 'malformed node' in reason:  # (Python's literal_eval, on a bare word: says only "<ast.Name ...>")
    reason = 'Unable to parse value'
  if e.filename:
    return f'gin file {e.filename} line {e.lineno}: {reason}: {line}'
  name, _, value = line.partition('=')
  name, value = name.strip(), value.strip()
  hint = ''
  if value and value[0] not in '\'"[({@%':
    # Most often --gin.MODEL_DIR=/tmp/x: the shell strips its own quotes, and gin reads a bare
    # string as neither a literal nor a reference.
    hint = f' (a string needs quotes of its own inside the flag: --gin.{name}="\'{value}\'")'
  return f'gin binding {line!r}: {reason}{hint}'


def _gin_unclosed_binding(bindings: Sequence[str], e: tokenize.TokenError) -> str:
  for b in bindings:
    try:
      list(tokenize.generate_tokens(io.StringIO(b).readline))
    except tokenize.TokenError:
      return f'gin binding {b.strip()!r}: a bracket or quote is not closed'
  return f'gin bindings: {e.args[0]}'


def _gin_texts(gin_files: Sequence[str], search_paths: Sequence[str], seen=None) -> list[str]:
  """The text of gin files and of the files they include."""
  seen = set() if seen is None else seen
  out = []
  for f in gin_files:
    path = next((os.path.join(p, f) for p in ['', *search_paths] if os.path.exists(os.path.join(p, f))),
                None)
    if path is None or path in seen:
      continue
    seen.add(path)
    with open(path) as fh:
      text = fh.read()
    out.append(text)
    out += _gin_texts(re.findall(r"^include\s+['\"]([^'\"]+)['\"]", text, re.M), search_paths, seen)
  return out


def _one_line(e: BaseException) -> str:
  msg = str(e).strip().splitlines()
  first = msg[0] if msg else type(e).__name__
  m = re.search(r"missing 1 required positional argument: 'value'", first)
  scope = re.search(r"in scope '([^']+)'", str(e))
  if m and scope:  # gin's way of saying a %MACRO was never set
    return f'gin macro {scope.group(1)} is used but never set (add --gin.{scope.group(1)}=...)'
  where = [l.strip() for l in msg[1:] if l.strip().startswith(('In file', 'In bindings'))]
  return first + (f' ({where[0]})' if where else '')


class _DropPackingNotice(logging.Filter):
  # seqio says this for every dataset it packs: the *_pretokenized strings are not model features.
  def filter(self, record):
    return 'will be removed during packing' not in record.getMessage()


def make_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m t5x_like.train', description=__doc__.split('\n')[0])
  p.add_argument('--gin_file', action='append', default=[], help='gin file (repeatable)')
  p.add_argument('--gin_bindings', action='append', default=[], help='gin binding (repeatable)')
  p.add_argument('--gin_search_paths', action='append', default=[], help='where gin files are looked up')
  p.add_argument('--coordinator_address', help='multi-host: host:port of process 0 '
                 '(omit on TPU pods and SLURM, where jax finds it)')
  p.add_argument('--num_processes', type=int)
  p.add_argument('--process_id', type=int)
  p.add_argument('--distributed', action='store_true',
                 help='call jax.distributed.initialize() (implied by --coordinator_address)')
  p.add_argument('--distributed_timeout_secs', type=float, default=60.0,
                 help='multi-host: give up (exit 4) when the processes have not all joined the '
                 'coordinator within this time')
  p.add_argument('--heartbeat_timeout_secs', type=int, default=90,
                 help="multi-host: jax's coordination service declares a silent process dead after "
                 'this (a backstop behind TrainerConfig.step_timeout_secs)')
  p.add_argument('--restore_step', type=int,
                 help='resume from this checkpoint step instead of the latest '
                 '(= --gin.TrainerConfig.restore_step=N)')
  p.add_argument('--restore_fallback', action='store_true',
                 help='if the latest checkpoint is damaged, resume from the newest readable one '
                 '(= --gin.TrainerConfig.restore_fallback=True)')
  p.add_argument('--preemption_grace_secs', type=float,
                 help='after SIGTERM, save and exit within this (= TrainerConfig.preemption_grace_secs)')
  p.add_argument('--compilation_cache_dir',
                 help="jax's persistent compilation cache (a local path, or gs://... shared by every "
                 'host): a restarted or resumed run loads its compiled steps instead of compiling '
                 "again (t5x_like/compilation_cache.py); 'none': no cache")
  p.add_argument('--traceback', action='store_true', help='show full tracebacks for set-up errors')
  return p


def initialize_distributed(args) -> None:
  """jax.distributed.initialize with a bounded wait. jax aborts with a C++ stack dump when the
  coordinator cannot be reached; a timer a little earlier says who waited for whom, then exits 4."""
  where = (f'process {args.process_id} of {args.num_processes}' if args.process_id is not None
           else 'this process')
  coordinator = args.coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS',
                                                           '(found by jax from the cluster)')

  def give_up():
    print(f'error: {where} could not join the coordinator at {coordinator} within '
          f'{args.distributed_timeout_secs:g} s (--distributed_timeout_secs): is process 0 running '
          'and reachable, and did every process start?', file=sys.stderr, flush=True)
    os._exit(exit_codes.PEER_LOST)  # pylint: disable=protected-access

  timer = threading.Timer(args.distributed_timeout_secs, give_up)
  timer.daemon = True
  timer.start()
  try:
    jax.distributed.initialize(coordinator_address=args.coordinator_address,
                               num_processes=args.num_processes, process_id=args.process_id,
                               initialization_timeout=int(args.distributed_timeout_secs) + 30,
                               heartbeat_timeout_seconds=args.heartbeat_timeout_secs)
  finally:
    timer.cancel()


def _reliability_bindings(args) -> list[str]:
  out = []
  if args.restore_step is not None:
    out.append(f'TrainerConfig.restore_step = {args.restore_step}')
  if args.restore_fallback:
    out.append('TrainerConfig.restore_fallback = True')
  if args.preemption_grace_secs is not None:
    out.append(f'TrainerConfig.preemption_grace_secs = {args.preemption_grace_secs}')
  return out


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = make_parser()
  try:
    cli_bindings, rest = split_gin_flags(argv)
  except ValueError as e:
    parser.error(str(e))
  args = parser.parse_args(rest)
  absl_logger = logging.getLogger('absl')
  if not any(isinstance(f, _DropPackingNotice) for f in absl_logger.filters):  # main() may run again
    absl_logger.addFilter(_DropPackingNotice())
  state = {'in_setup': True}
  distributed = _is_distributed(args)
  old_handler = preemption.install_sigterm_handler(args.preemption_grace_secs)
  try:
    with interrupts.noting_ctrl_c():
      code = _run(args, cli_bindings, state)
  except Exception as e:  # pylint: disable=broad-except
    if not distributed:
      raise
    if _PEER_GONE.search(str(e)):
      print(f'error: process {jax.process_index()}: a collective failed because another process of '
            f'the job is gone ({_one_line(e)}); exiting with {exit_codes.PEER_LOST} (restartable)',
            file=sys.stderr)
      code = exit_codes.PEER_LOST
    else:
      traceback.print_exc()
      code = exit_codes.CRASHED
  finally:
    if old_handler is not None:
      signal.signal(signal.SIGTERM, old_handler)
  if distributed and code in (exit_codes.CONFIG_ERROR, exit_codes.CRASHED, exit_codes.STORAGE_FULL,
                              exit_codes.INTERRUPTED, exit_codes.PEER_LOST) and not state.get(
                                  'stopped_together'):
    # An error on this process only leaves the others waiting in a collective for its devices, and
    # a normal exit would wait in jax.distributed's shutdown barrier for them (5 min, then an abort
    # that hides this message), while a peer's step watchdog exits first and is blamed. Exit now:
    # the launcher reports this process first, with its message. (Nothing is lost: a save in
    # flight is written into a temporary folder that only a completed save renames.) Processes
    # that stopped together (a Ctrl-C, as a preemption) leave through that barrier instead: had
    # process 0, which hosts the coordination service, left at once, a peer a moment behind it
    # aborted ("the JAX distributed service detected fatal errors").
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # pylint: disable=protected-access
  return code


# A collective that fails because another process of the job is gone (exited, crashed, killed), in
# gloo's words (CPU collectives): said in one line, exit 4, as the step watchdog says a hang. Seen
# when a peer stopped on a full disk while this process waited for it in Orbax's pre-save sync.
# (Gloo's own: a storage server's reset connection during a save is not a lost peer.)
_PEER_GONE = re.compile(r'Gloo .*Connection (?:closed|reset) by peer', re.S)


def check_processes_agree() -> None:
  """ValueError, on every process, when some process of the job has other devices, runs other code
  or another jax, or has another gin config than process 0. A host that lost an accelerator makes a
  mesh that does not divide, which reads as a config error; hosts with different checkouts (one
  host's `git pull` failed) or flags build different programs, which then wait for each other in
  collectives that never match, or train on silently wrong."""
  rule = ('every process of a job must run the same code, jax and config on the same number and '
          'kind of devices (the same checkout and command on every host)')
  # Every process sees every device of the job, so the devices are compared without a collective
  # (which itself needs as many devices on every process).
  devices: dict = {}
  for d in jax.devices():
    devices.setdefault(d.process_index, []).append(d.device_kind)
  has = {p: f'{len(kinds)} x {", ".join(sorted(set(kinds)))}' for p, kinds in devices.items()}
  differ = [p for p in sorted(has) if has[p] != has[0]]
  if differ:
    raise ValueError(f'process(es) {differ} of {jax.process_count()} have other devices than '
                     f'process 0 ({", ".join(f"process {p}: {has[p]}" for p in [0] + differ)}): '
                     f'a host that lost an accelerator? {rule}')
  checks = (('run other code', provenance.source_commit() or 'unknown', True),
            ('run another jax', jax.__version__, True),
            ('have another gin config', gin.config_str(), False))
  differing = partitioning.processes_differing_from_first(*(value for _, value, _ in checks))
  for (differs, value, shown), differ in zip(checks, differing):
    if differ:
      raise ValueError(f'process(es) {differ} of {jax.process_count()} {differs} than process 0'
                       f'{f" (here: {value})" if shown else ""}: {rule}')


def _is_distributed(args) -> bool:
  return bool(args.coordinator_address or args.distributed)


def _run(args, cli_bindings, state) -> int:
  if _is_distributed(args):
    initialize_distributed(args)
  try:
    if not args.gin_file:
      raise ValueError('no --gin_file given (see gin_configs/examples/)')
    compilation_cache.use(args.compilation_cache_dir)
    parse_gin_importing_tasks_if_named(
        args.gin_file, args.gin_bindings + cli_bindings + _reliability_bindings(args),
        args.gin_search_paths)
    if _is_distributed(args):
      check_processes_agree()
    train(on_setup_done=lambda: state.update(in_setup=False))
  except storage_space.StorageFull as e:  # before the compile, or a save that found the store full
    print(f'error: {_one_line(e)}', file=sys.stderr)
    return exit_codes.STORAGE_FULL
  except trainer_lib.DataExhausted as e:  # (a ValueError after set-up: a restart would not help)
    print(f'error: {_one_line(e)}', file=sys.stderr)
    return exit_codes.CONFIG_ERROR
  except SETUP_ERRORS as e:
    if not state['in_setup'] or args.traceback:
      raise
    print(f'error: {_one_line(e)}', file=sys.stderr)
    return exit_codes.CONFIG_ERROR
  except trainer_lib.Diverged as e:
    print(f'error: {_one_line(e)}', file=sys.stderr)  # (without the line gin adds to the message)
    return exit_codes.DIVERGED
  except trainer_lib.Preempted:
    return exit_codes.PREEMPTED
  except KeyboardInterrupt as e:  # Ctrl-C: no traceback; once training began, the trainer said
    state['stopped_together'] = isinstance(e, interrupts.StoppedTogether)  # where it stands
    if state['in_setup']:
      print('interrupted during set-up, before training began', file=sys.stderr)
    return exit_codes.INTERRUPTED
  return exit_codes.FINISHED


if __name__ == '__main__':
  # Into a launcher's log file each line goes as it is printed, not when a block buffer fills or the
  # process exits: one that then died (killed, or aborted on its way out) lost its last lines, among
  # them 'interrupted after step ...'.
  sys.stdout.reconfigure(line_buffering=True)
  sys.exit(main())
