"""Signals to a launcher reach its processes once each (launch/child_processes.py), and a Ctrl-C that
lands while a save starts, or while Orbax waits for one, leaves neither a half-begun checkpoint nor a
traceback (t5x_like/checkpointing.py). The launchers' end-to-end cases (launch.local, `python -m launch
local`) are in test_reliability_processes.py; the sweep's is here."""
import contextlib
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import pytest

from conftest import REPO, steps_on_disk
from launch import child_processes
from t5x_like import checkpointing, exit_codes, interrupts

CHILD = ('import signal, sys, time\n'
         'signal.signal(signal.SIGTERM, lambda *a: sys.exit(75))\n'
         'signal.signal(signal.SIGINT, lambda *a: sys.exit(130))\n'
         'print("ready", flush=True)\n'
         'time.sleep(60)\n'
         'sys.exit(9)\n')


def _start_ready(children):
  proc = children.start([sys.executable, '-c', CHILD], stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == 'ready'
  return proc


def _state(pid) -> str:
  stat = pathlib.Path(f'/proc/{pid}/stat').read_text()
  return stat[stat.rindex(')') + 2]  # R, S, T (stopped), Z, ...


def _gone(pid) -> bool:
  """Exited (a zombie counts: where pid 1 reaps nothing, an orphan stays one)."""
  try:
    return _state(pid) == 'Z'
  except FileNotFoundError:
    return True


def _until(what, timeout=10):
  deadline = time.monotonic() + timeout
  while not what():
    assert time.monotonic() < deadline
    time.sleep(0.05)


@pytest.mark.parametrize('sig, passed_on, code', [('SIGHUP', 75, 75), ('SIGTERM', 75, 75),
                                                  ('SIGINT', 130, 130)])
def test_a_signal_to_the_launcher_reaches_each_child_once_in_its_own_session(sig, passed_on, code):
  with child_processes.Children() as children:
    assert children.active  # (on the main thread: otherwise the signal below would hit this process)
    procs = [_start_ready(children) for _ in range(2)]
    assert [os.getsid(p.pid) for p in procs] == [p.pid for p in procs]  # not the launcher's group
    os.kill(os.getpid(), getattr(signal, sig))
    assert [p.wait(timeout=30) for p in procs] == [passed_on, passed_on]  # SIGHUP arrives as SIGTERM
    late = children.start([sys.executable, '-c', CHILD], stdout=subprocess.DEVNULL)
    assert late.wait(timeout=30) != 9  # started after the signal: it gets it at once
  assert signal.getsignal(getattr(signal, sig)) is not children._pass_on  # handlers restored
  with pytest.raises(child_processes.Stopped) as info:
    children.raise_if_stopped()
  assert info.value.signum == getattr(signal, sig) and info.value.exit_code == code


@contextlib.contextmanager
def _launcher_of(child: str):
  """A launcher in a process of its own (Children, on its main thread) with one child running the
  code `child`: yields the launcher's Popen and the child's pid once the child is ready; kills the
  launcher on the way out."""
  launcher = ('import subprocess, sys, time\n'
              'from launch import child_processes\n'
              'with child_processes.Children() as children:\n'
              f'  proc = children.start([sys.executable, "-c", {child!r}], stdout=subprocess.PIPE, text=True)\n'
              '  print(proc.pid, proc.stdout.readline().strip(), flush=True)\n'
              '  time.sleep(60)\n')
  with subprocess.Popen([sys.executable, '-c', launcher], cwd=REPO, stdout=subprocess.PIPE,
                        text=True, env=dict(os.environ, PYTHONPATH=str(REPO))) as proc:
    try:
      pid, ready = proc.stdout.readline().split()
      assert ready == 'ready'
      yield proc, pid
    finally:
      proc.kill()  # (after which its child is sent SIGTERM)


def test_a_launcher_killed_outright_still_gets_its_children_to_save_and_stop(tmp_path):
  # SIGKILL (or the OOM killer) passes nothing on; in sessions of their own the children would run on
  # unsupervised. The kernel sends each one SIGTERM instead (PR_SET_PDEATHSIG).
  said = tmp_path / 'said'
  child = CHILD.replace('sys.exit(75)', f'(open({str(said)!r}, "w").write("TERM"), sys.exit(75))')
  with _launcher_of(child) as (_, pid):
    pass  # (the launcher is killed here)
  deadline = time.monotonic() + 30
  while not (said.exists() and said.read_text()):  # (created, then written)
    assert time.monotonic() < deadline, 'the child never heard of its launcher\'s death'
    time.sleep(0.1)
  assert said.read_text() == 'TERM'
  _until(lambda: _gone(pid))


def test_ctrl_z_pauses_the_children_with_the_launcher_and_fg_resumes_them():
  # Before, Ctrl-Z stopped the launcher alone: its children, in sessions of their own, ran on.
  with _launcher_of(CHILD) as (proc, child):
    proc.send_signal(signal.SIGTSTP)  # (what a terminal's Ctrl-Z sends the launcher's group)
    _until(lambda: _state(proc.pid) == 'T' and _state(child) == 'T')
    proc.send_signal(signal.SIGCONT)  # fg
    _until(lambda: _state(proc.pid) != 'T' and _state(child) != 'T')
  _until(lambda: _gone(child))  # (its launcher's death ends it)


def test_after_sigterm_the_launcher_exits_with_a_code_it_is_given_but_130_after_sigint():
  assert child_processes.Stopped(signal.SIGTERM, exit_codes.STORAGE_FULL).exit_code == 5
  assert child_processes.Stopped(signal.SIGINT, exit_codes.STORAGE_FULL).exit_code == 130


def test_ctrl_c_as_a_save_starts_is_held_until_the_save_is_under_way(tmp_path):
  ck = checkpointing.Checkpointer(str(tmp_path / 'run'), save_every=1)
  state = {'step': jnp.array(1), 'params': {'w': jnp.arange(8.0)}}
  real_save = ck.manager.save

  def save_with_ctrl_c(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)  # (its handler runs before the next line)
    return real_save(*args, **kwargs)

  ck.manager.save = save_with_ctrl_c
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # (as in any python process)
  try:
    with pytest.raises(KeyboardInterrupt):
      ck.save(1, state, None)
  finally:
    signal.signal(signal.SIGINT, previous)
  ck.wait()  # what the trainer does after a Ctrl-C
  ck.close()
  assert steps_on_disk(tmp_path / 'run') == [1]
  assert [p.name for p in (tmp_path / 'run' / 'checkpoints').iterdir()] == ['1']  # no temporary folder


def test_a_second_ctrl_c_during_a_held_save_goes_through_at_once():
  done = []
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    with pytest.raises(KeyboardInterrupt):
      with interrupts.ctrl_c_held():
        os.kill(os.getpid(), signal.SIGINT)
        done.append('held the first')
        os.kill(os.getpid(), signal.SIGINT)  # a save that hangs can still be abandoned
        done.append('held the second too')
  finally:
    signal.signal(signal.SIGINT, previous)
  assert done == ['held the first']


def test_orbax_records_of_an_interrupted_wait_are_dropped_and_others_kept(tmp_path, caplog):
  checkpointing.Checkpointer(str(tmp_path / 'run'), save_every=1).close()  # (installs the filter)
  absl_log = logging.getLogger('absl')
  with caplog.at_level(logging.ERROR, logger='absl'):
    for error in (KeyboardInterrupt(), RuntimeError('disk on fire')):
      try:
        raise error
      except BaseException:  # pylint: disable=broad-except
        absl_log.error('[wait_until_finished] Save Finalize thread (save_finalize) failed.',
                       exc_info=True)
  kept = [r.exc_info[0].__name__ for r in caplog.records]
  assert kept == ['RuntimeError'], kept


def test_sigint_to_the_sweep_alone_stops_its_run_in_one_line(small_text, tmp_path):
  out = tmp_path / 'sweep'
  argv = [sys.executable, '-m', 'launch.sweep', str(out),
          '--gin_file=gin_configs/experiments/clone_ablation_cpu.gin', '--train_steps=5000',
          '--grid', 'p_clone=0.5', f"--gin.TRAIN_FILES=['{small_text['train']}']",
          f"--gin.VALIDATION_FILES=['{small_text['validation']}']", '--gin.VOCAB_SIZE=300',
          '--gin.MODEL_VOCAB_SIZE=600', '--gin.SEQUENCE_LENGTH=32', '--gin.BATCH_SIZE=8',
          '--gin.NUM_LAYERS=1', '--gin.EMBED_DIM=32', '--gin.NUM_HEADS=2', '--gin.MLP_DIM=64',
          '--gin.TrainerConfig.log_every=5', '--compilation_cache_dir=none',
          f"--gin.sentencepiece_vocabulary.cache_dir='{tmp_path / 'spm'}'"]
  train_log = out / 'p0.5' / 'train.log'
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  with subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                        text=True) as sweep:
    try:
      deadline = time.monotonic() + 300
      while not (train_log.exists() and 'step    5/5000' in train_log.read_text()):
        assert sweep.poll() is None and time.monotonic() < deadline, sweep.stderr.read()[-3000:]
        time.sleep(0.2)
      run_pid = int(pathlib.Path(f'/proc/{sweep.pid}/task/{sweep.pid}/children').read_text().split()[0])
      sweep.send_signal(signal.SIGINT)
      code = sweep.wait(timeout=120)
      err = sweep.stderr.read()
    finally:
      if sweep.poll() is None:
        sweep.kill()
  assert code == exit_codes.INTERRUPTED and 'Traceback' not in err, err[-3000:]
  assert err.strip().splitlines()[-1].startswith('[sweep] stopped by SIGINT; the same command goes on '
                                                 'from there'), err[-3000:]
  log = train_log.read_text().strip().splitlines()
  assert 'interrupted after step' in log[-1], '\n'.join(log[-60:])
  with pytest.raises(ProcessLookupError):
    os.kill(run_pid, 0)
