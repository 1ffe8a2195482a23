"""Orbax checkpoints that hold the train state and the data-iterator position together.

Layout: MODEL_DIR/checkpoints/<step>/{state, checksums, data, counters}/. `state` is the sharded
{step, params, opt_state} pytree (StandardSave, async); `checksums` holds a checksum of each array's
bits (state_checksums.py), compared after every restore, since Orbax stores none; `counters` is a
small JSON of run totals that the state does not hold (e.g. how many non-finite steps were skipped).
Checkpoints written before `checksums` or `counters` existed read them as {}; `data` is the position
in the data, saved by whatever the data module
hands over (`data_checkpoint`: an object with save_args() / restore_args() -> orbax CheckpointArgs and
restored(value)): one tf.data iterator checkpoint per host on the seqio path (data_seqio.py), the next
global batch as JSON on the export path (data_grain.py). Either way a resumed run continues with
exactly the next batches.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
import warnings
from typing import Any, Callable, Optional, Sequence

import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util
from jax.experimental import multihost_utils

from t5x_like import host_batches
from t5x_like import interrupts
from t5x_like import partitioning
from t5x_like import state_checksums
from t5x_like import storage_space
from t5x_like import writer_lock


def checkpoint_dir(model_dir: str) -> epath.Path:
  # Orbax wants absolute paths; users write MODEL_DIR='runs/x'. (gs:// and other URLs pass through.)
  if '://' not in str(model_dir):
    model_dir = os.path.abspath(model_dir)
  return epath.Path(model_dir) / 'checkpoints'


class CheckpointDamaged(ValueError):
  """A checkpoint that cannot be read (truncated or missing file): the message names step and file."""


class CheckpointMismatch(ValueError):
  """A readable checkpoint whose arrays differ from what this config builds."""


class CheckpointGone(FileNotFoundError):
  """No such step, or one removed while it was read: a trainer still running on the run keeps only
  its last few (TrainerConfig.keep_checkpoints) and removes older ones as it saves."""


class Checkpointer:
  """A CheckpointManager that saves every `save_every` steps, keeps the last `keep`.

  Orbax writes each step into a temporary folder and renames it when every process has finished
  (the commit), so a step folder that exists is complete; temporary folders left by a killed run are
  removed at start (`cleanup_tmp_directories`) and never block a later save of the same step, which
  is why the model dir's writer lock (writer_lock.py) is taken first: a second trainer would remove
  the first one's save in flight. ModelDirInUse, on every process, when another process holds it.
  """

  def __init__(self, model_dir: str, *, save_every: int, keep: Optional[int] = 3,
               async_save: bool = True, log=print):
    self._lock = _lock_model_dir(model_dir, log)
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=save_every, max_to_keep=keep, create=True,
        enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
    self.directory = checkpoint_dir(model_dir)
    try:
      self.manager = ocp.CheckpointManager(self.directory, options=options)
    except BaseException:
      self.release_lock()
      raise
    self._reader = None  # restores: host-local, see restore()
    self._last_saved: Optional[int] = None
    _quiet_orbax_records_said_in_one_line()
    quiet_what_failed_reads_and_writes_leave_behind()

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def due(self, step: int) -> bool:
    """Whether the periodic policy (or a preemption sync point) saves at `step`."""
    return self.manager.should_save(step)

  def diagnose(self, step: int, abstract_state: Any, error: BaseException) -> ValueError:
    return diagnose(self.directory, step, abstract_state, error)

  def set_aside(self, steps: Sequence[int]) -> Optional[epath.Path]:
    """Moves the folders of `steps` (newer than the one resumed from) out of the checkpoint dir into
    MODEL_DIR/set_aside_checkpoints/<time>/, so that they neither get overwritten nor block the saves
    of those steps; nothing is deleted."""
    if not steps:
      return None
    dest = self.directory.parent / 'set_aside_checkpoints' / time.strftime('%Y%m%d-%H%M%S')
    if jax.process_index() == 0:
      dest.mkdir(parents=True, exist_ok=True)
      for s in steps:
        (self.directory / str(s)).rename(dest / str(s))
    _sync_processes('set_aside')
    self.manager.reload()
    return dest

  def save(self, step: int, state: Any, data_checkpoint: Optional[Any],
           force: bool = False, counters: Optional[dict] = None,
           checksums: Optional[dict] = None) -> bool:
    """checksums: state_checksums.checksums(state), saved beside it; verify() compares them after a
    restore."""
    items = {'state': ocp.args.StandardSave(state)}
    if checksums:
      items['checksums'] = ocp.args.JsonSave(checksums)
    if counters:
      items['counters'] = ocp.args.JsonSave(counters)
    if data_checkpoint is not None:
      items['data'] = data_checkpoint.save_args()
    # (An asynchronous save's failure surfaces here at the next save, or in wait/check_for_errors.)
    with self._storage_full_is_one_line(step), interrupts.ctrl_c_held():
      saved = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
    self._last_saved = step
    return saved

  def check_for_errors(self):
    """Raises a failed background save's error now rather than at the next save (StorageFull for a
    full store), so that no more steps are trained that could not be saved."""
    with self._storage_full_is_one_line(self._last_saved):
      self.manager.check_for_errors()
      # A save that failed after its background thread finished is held by the manager's finalize
      # thread, which check_for_errors does not read: once no save is running, waiting returns at
      # once, raising what the last one raised.
      if self._last_saved is not None and not self.manager.is_saving_in_progress():
        self.manager.wait_until_finished()

  @contextlib.contextmanager
  def _storage_full_is_one_line(self, step: Optional[int]):
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except  # (Orbax re-raises tensorstore's ValueError)
      if not storage_space.is_storage_full(e):
        raise
      try:
        self.manager.reload()  # (what is committed on disk, not the steps this manager started)
        latest = self.manager.latest_step()
      except Exception:  # pylint: disable=broad-except
        latest = None
      raise storage_space.save_failed(e, self.directory, step, latest) from None

  def restore(self, step: int, abstract_state: Any,
              data_checkpoint: Optional[Any] = None) -> Any:
    """Reads `step` on this host only. Orbax's own restore ends in a barrier that is a device
    collective: a host whose read fails never reaches it, and the hosts that did then pair it with
    the next collective (gloo aborts, NCCL hangs). So every host reads its part with no barrier, and
    the caller agrees on the outcome across hosts (trainer._restore)."""
    state = self._read(step, ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))[
        'state']
    if data_checkpoint is not None:
      # Restored on its own, so that a failure here is known to be the data position's.
      where = self.directory / str(step) / 'data'
      try:
        data_checkpoint.restored(
            self._read(step, ocp.args.Composite(data=data_checkpoint.restore_args()))['data'])
      except host_batches.PositionMismatch as e:  # a whole checkpoint that this run differs from
        raise CheckpointMismatch(f'checkpoint at step {step} in {self.directory} does not match '
                                 f'this run: {str(e).strip()}') from e
      except Exception as e:  # (tf.errors.*, for a truncated or missing file, are not ValueErrors)
        raise damaged(self.directory, step, f'{_failed_file(e, where)}: {_reason(e)}') from e
    return state

  def counters(self, step: int) -> dict:
    """The run totals saved with `step` ({} when it has none: saved before they existed)."""
    return _json_item(self.directory / str(step), 'counters', lambda args: self._read(step, args))

  def verify(self, step: int, state: Any) -> Optional[CheckpointDamaged]:
    """Compares the arrays restored from `step` with the checksums saved with them: the error naming
    the first array whose bits changed, else None (also for checkpoints saved without checksums).
    A device computation over the whole state: every process calls it together."""
    return _verify_checksums(self.directory, step, lambda args: self._read(step, args), state)

  def _read(self, step: int, args: ocp.args.Composite) -> Any:
    if self._reader is None:
      this_host = jax.process_index()
      self._reader = ocp.Checkpointer(ocp.CompositeCheckpointHandler(),
                                      multiprocessing_options=ocp.options.MultiprocessingOptions(
                                          primary_host=this_host, active_processes={this_host}))
    quiet_what_failed_reads_and_writes_leave_behind()
    return self._reader.restore(self.directory / str(step), args=args)

  def reached_preemption(self, step: int) -> bool:
    return self.manager.reached_preemption(step)

  def wait(self):
    with self._storage_full_is_one_line(self._last_saved):
      self.manager.wait_until_finished()

  def close(self):
    self.manager.close()
    if self._reader is not None:
      self._reader.close()
      self._reader = None
    self.release_lock()

  def release_lock(self) -> None:
    """Lets another trainer open MODEL_DIR (close() does this too; so does this process's end)."""
    if self._lock is not None:
      self._lock.close()
      self._lock = None


def _lock_model_dir(model_dir: str, log) -> Optional[writer_lock.WriterLock]:
  """Process 0 takes the lock for the job (every host sees the same MODEL_DIR); the others learn
  whether it could, so that all of them stop together rather than wait for it in a collective."""
  lock, refused = None, None
  if jax.process_index() == 0:
    try:
      lock = writer_lock.acquire(model_dir, log)
    except writer_lock.ModelDirInUse as e:
      refused = e
  if not partitioning.all_processes_have(refused is None):
    raise refused or writer_lock.ModelDirInUse(
        f'MODEL_DIR={model_dir!r} is in use by another trainer (process 0 says which)')
  return lock


def diagnose(directory: epath.Path, step: int, abstract: Any, error: BaseException) -> ValueError:
  """Why restoring `abstract` (the whole state, or a part of it such as {'params': ...}) from `step`
  of the checkpoint dir `directory` failed: CheckpointMismatch when the saved shapes differ from it,
  else CheckpointDamaged naming the file that could not be read."""
  if isinstance(error, (CheckpointDamaged, CheckpointMismatch)):
    return error
  step_dir = directory / str(step)
  handler = ocp.StandardCheckpointHandler()
  try:
    saved = handler.metadata(step_dir / 'state').tree
  except Exception as e:  # pylint: disable=broad-except
    return damaged(directory, step, f'{_failed_file(e, step_dir / "state")}: {_reason(e)}')
  finally:
    handler.close()
  if isinstance(saved, dict) and isinstance(abstract, dict):  # a partial restore compares its part
    saved = {k: v for k, v in saved.items() if k in abstract}
  diff = _first_difference(saved, abstract)
  if diff:
    return CheckpointMismatch(f'checkpoint at step {step} in {directory} does not match this config: '
                              f'{diff}')
  return damaged(directory, step, f'{_failed_file(error, step_dir)}: {_reason(error)}')


def damaged(directory: epath.Path, step: int, detail: str) -> CheckpointDamaged:
  """'checkpoint at step N in DIR is damaged: DETAIL', the wording of every reader of checkpoints."""
  return CheckpointDamaged(f'checkpoint at step {step} in {directory} is damaged: {detail}')


def _json_item(step_dir: epath.Path, name: str, read: Callable[[ocp.args.Composite], Any]) -> dict:
  """A small JSON item of a checkpoint step, read through `read` ({} when the step has none)."""
  if not (step_dir / name).exists():
    return {}
  return dict(read(ocp.args.Composite(**{name: ocp.args.JsonRestore()}))[name])


def _verify_checksums(directory: epath.Path, step: int, read: Callable[[ocp.args.Composite], Any],
                      tree: Any) -> Optional[CheckpointDamaged]:
  """The error naming the first array of `tree` (restored from `step`) whose checksum differs from
  the one saved with it, else None; arrays the step saved no checksum of are not compared."""
  try:
    saved = _read_checksums(directory, step, read)
  except CheckpointDamaged as e:
    return e
  if not saved:
    return None
  mismatch = state_checksums.first_mismatch(saved, state_checksums.checksums(tree))
  return damaged(directory, step, mismatch) if mismatch else None


def saved_checksums(mngr: ocp.CheckpointManager, step: int) -> dict:
  """The checksums saved with `step` of `mngr`'s checkpoints ({} when it has none: saved before they
  existed, or by the HF import), for readers that compare arrays one at a time."""
  return _read_checksums(mngr.directory, step, lambda args: mngr.restore(step, args=args))


def _read_checksums(directory: epath.Path, step: int,
                    read: Callable[[ocp.args.Composite], Any]) -> dict:
  try:
    return _json_item(directory / str(step), 'checksums', read)
  except Exception as e:  # pylint: disable=broad-except
    raise damaged(directory, step, f'{directory / str(step) / "checksums"}: {_reason(e)}') from e


def _sync_processes(name: str):
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _reason(e: BaseException) -> str:
  lines = str(e).strip().splitlines()
  first = lines[0] if lines else type(e).__name__
  return first.split(' [tensorstore_spec=')[0][:300]


def _failed_file(e: BaseException, under: epath.Path) -> str:
  """The path under `under` that the error names (tensorstore, tf.train.Checkpoint and Orbax all
  quote it somewhere in their messages), else `under` itself."""
  found = re.findall(re.escape(str(under)) + r'[^\s"\'\]\[,;:]*', str(e))
  return max(found, key=len).rstrip('/.') if found else str(under)


def _first_difference(saved: Any, abstract: Any) -> Optional[str]:
  """'params/x/kernel: checkpoint (64, 32) vs config (32, 32)' for the first leaf that differs."""
  flat_saved = traverse_util.flatten_dict(saved, sep='/') if isinstance(saved, dict) else {}
  flat_new = traverse_util.flatten_dict(abstract, sep='/') if isinstance(abstract, dict) else {}
  only_saved = sorted(set(flat_saved) - set(flat_new))
  only_new = sorted(set(flat_new) - set(flat_saved))
  if only_saved or only_new:
    return (f'parameters only in the checkpoint: {only_saved[:3]}, only in this config: '
            f'{only_new[:3]}')
  for k in sorted(flat_new):
    a, b = flat_saved[k], flat_new[k]
    if tuple(getattr(a, 'shape', ())) != tuple(getattr(b, 'shape', ())):
      return f'{k}: checkpoint shape {tuple(a.shape)} vs config {tuple(b.shape)}'
  return None


def restore_params(model_dir: str, abstract_params: Any, step: Optional[int] = None):
  """Restores only the parameters of a run (for evaluation and export): no optimizer state is read.
  They are checked against the checksums saved with them (CheckpointDamaged if their bits changed);
  a step that cannot be read raises CheckpointDamaged or CheckpointMismatch (see `diagnose`)."""
  directory = checkpoint_dir(model_dir)
  mngr = open_reader(directory)
  try:
    steps = mngr.all_steps()
    step = max(steps, default=None) if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {directory}')
    if step not in steps:
      raise CheckpointGone(f'no checkpoint at step {step} in {directory} (steps: {list(steps)})')
    quiet_what_failed_reads_and_writes_leave_behind()
    try:
      restored = mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(
              item={'params': abstract_params},
              restore_args=jax.tree.map(_restore_arg, {'params': abstract_params}),
              partial_restore=True)))
      params = restored['state']['params']
      changed = _verify_checksums(directory, step, lambda args: mngr.restore(step, args=args),
                                  {'params': params})
    except Exception as e:  # pylint: disable=broad-except  # classified
      _raise_if_gone(directory, step, e)
      raise diagnose(directory, step, {'params': abstract_params}, e) from e
    if changed:
      _raise_if_gone(directory, step, changed)
  finally:
    mngr.close()
  if changed:
    raise changed
  return params, step


def open_reader(directory: epath.Path, tries: int = 3) -> ocp.CheckpointManager:
  """A CheckpointManager to read with (no clean-up of anything). Orbax lists the steps, then reads
  each one's metadata: a step that a trainer still running removes in between fails the listing with
  FileNotFoundError; listed again, it is no longer there."""
  for _ in range(tries - 1):
    try:
      return ocp.CheckpointManager(directory)
    except FileNotFoundError:
      pass
  return ocp.CheckpointManager(directory)


def _raise_if_gone(directory: epath.Path, step: int, error: BaseException) -> None:
  """A read that failed because the step went away is not a damaged checkpoint."""
  if not (directory / str(step)).exists():
    raise CheckpointGone(f'checkpoint step {step} in {directory} was removed while it was being '
                         'read (a trainer still running on it keeps only its last '
                         'TrainerConfig.keep_checkpoints)') from error


def quiet_what_failed_reads_and_writes_leave_behind():
  """When one array of a restore cannot be read, Orbax's event loop ends with the other arrays'
  tensorstore reads still in flight, and Python reports each of them as it ends: dozens of
  tracebacks around the one-line error that names the damaged file. A read that finishes later
  calls back into the closed loop (an unraisable RuntimeError('Event loop is closed')); a read
  that failed too is logged by asyncio as "Task (or Future) exception was never retrieved" when it
  is collected; a coroutine that never ran warns that it was never awaited, and one of Orbax's reads
  that was left half-way raises as it is closed. A save that a full store stops ends the same way,
  its other writes calling back into the closed loop (storage_space.py). Called before every restore
  and when a Checkpointer is made (the first reports come before the failure reaches its caller),
  this drops exactly those from then on; any other unraisable error, asyncio record or warning is
  still reported (this project has no coroutines of its own)."""
  previous = sys.unraisablehook
  if getattr(previous, 'quiets_failed_io', False):
    return
  warnings.filterwarnings('ignore', message=r"coroutine '.*' was never awaited",
                          category=RuntimeWarning)
  asyncio_log = logging.getLogger('asyncio')
  if not any(isinstance(f, _DropFailedTensorstoreTasks) for f in asyncio_log.filters):
    asyncio_log.addFilter(_DropFailedTensorstoreTasks())

  def hook(unraisable):
    error = unraisable.exc_value
    if isinstance(error, RuntimeError) and str(error) == 'Event loop is closed':
      return
    code = getattr(unraisable.object, 'cr_code', None)  # a coroutine closed as it was collected
    if (code is not None and code.co_name.startswith('_read')
        and f'{os.sep}orbax{os.sep}checkpoint{os.sep}' in code.co_filename):
      return
    previous(unraisable)

  hook.quiets_failed_io = True
  sys.unraisablehook = hook


class _DropFailedTensorstoreTasks(logging.Filter):
  """asyncio's "Task (or Future) exception was never retrieved" for a tensorstore read that failed,
  or a write that a full store stopped (the save's one-line error says so: storage_space.py)."""

  def filter(self, record):
    error = record.exc_info[1] if record.exc_info else None
    # (asyncio names the future's class: Task, Future, _GatheringFuture for an asyncio.gather.)
    return not (re.match(r'\w*(Task|Future) exception was never retrieved', record.getMessage())
                and isinstance(error, ValueError)
                and (re.search(r'Error (reading|opening) ', str(error))
                     or storage_space.is_storage_full(error)))


class DropOrbaxRecordsSaidInOneLine(logging.Filter):
  """Orbax's absl records of what this project reports in one line of its own: a save that a full
  store stopped (logged from each of Orbax's threads, with tracebacks, while training goes on; the
  run then stops with storage_space.save_failed's line), and a Ctrl-C that reached Orbax while it
  waited for a save ("Save Finalize thread failed", logged before Orbax raises it on; the trainer
  says where the run stands). Any other record is kept."""

  def filter(self, record):
    error = record.exc_info[1] if record.exc_info else None
    if isinstance(error, KeyboardInterrupt):
      return False
    return not storage_space.mentions_storage_full(
        record.getMessage() + ('' if error is None else ' ' + str(error)))


def _quiet_orbax_records_said_in_one_line() -> None:
  absl_log = logging.getLogger('absl')
  if not any(isinstance(f, DropOrbaxRecordsSaidInOneLine) for f in absl_log.filters):
    absl_log.addFilter(DropOrbaxRecordsSaidInOneLine())


def _restore_arg(a):
  # A concrete array is a template too (its shape, dtype and sharding), as in Orbax's own restores.
  if isinstance(a, (jax.ShapeDtypeStruct, jax.Array)) and getattr(a, 'sharding', None) is not None:
    return ocp.ArrayRestoreArgs(sharding=a.sharding, global_shape=a.shape, dtype=a.dtype)
  return ocp.RestoreArgs(restore_type=None)
