"""Issue 12 with real processes: a dead or hung peer, a coordinator that never answers, and two
processes (2 x 4 CPU devices through launch/local.py, gloo collectives) that are preempted, resume bit
for bit, and agree on a fallback when only one of them cannot read its part of a checkpoint. Kept apart
from test_reliability.py so that the two halves can run on different test workers.
"""
import contextlib
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, steps_on_disk, tb_losses, tb_losses_of
from t5x_like import exit_codes


# --- dead peers and hangs ----------------------------------------------------------------------------

def test_step_watchdog_exits_peer_lost_when_no_step_finishes(tmp_path):
  script = ('import time\n'
            'from t5x_like import watchdog\n'
            'class Done:\n  def block_until_ready(self): pass\n'
            'class Never:\n  def block_until_ready(self): time.sleep(3600)\n'
            'dog = watchdog.StepWatchdog(1.0)\n'
            'dog.dispatched(1, Done())\n'
            'dog.dispatched(2, Never())\n'
            'time.sleep(30)\n')
  t0 = time.monotonic()
  out = subprocess.run([sys.executable, '-c', script], cwd=REPO, capture_output=True, text=True,
                       timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))
  assert out.returncode == exit_codes.PEER_LOST, out.stderr
  assert time.monotonic() - t0 < 20
  assert 'no train step finished for' in out.stderr and 'last finished step 1' in out.stderr


def test_the_step_watchdog_does_not_count_time_its_process_was_stopped(tmp_path):
  # Ctrl-Z then `fg` (SIGSTOP, SIGCONT): the monotonic clock runs on while the process is frozen, and a
  # resumed run was taken for one with a dead peer (exit 4). A real hang afterwards is still caught.
  script = ('import time\n'
            'from t5x_like import watchdog\n'
            'class Done:\n  def block_until_ready(self): pass\n'
            'class Never:\n  def block_until_ready(self): time.sleep(3600)\n'
            'dog = watchdog.StepWatchdog(3.0)\n'
            'print("ready", flush=True)\n'
            'end, step = time.monotonic() + 14, 0\n'
            'while time.monotonic() < end:\n'
            '  step += 1\n'
            '  dog.dispatched(step, Done())\n'
            '  time.sleep(0.1)\n'
            'print("steps went on", flush=True)\n'
            'dog.dispatched(step + 1, Never())\n'
            'time.sleep(30)\n')
  with subprocess.Popen([sys.executable, '-c', script], cwd=REPO, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True,
                        env=dict(os.environ, PYTHONPATH=str(REPO))) as proc:
    assert proc.stdout.readline().strip() == 'ready'
    time.sleep(1)
    proc.send_signal(signal.SIGSTOP)
    time.sleep(8)  # (well past the 3 s timeout)
    proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=60)
  assert 'steps went on' in out, err
  assert proc.returncode == exit_codes.PEER_LOST and 'no train step finished for' in err, err


def test_distributed_init_timeout_names_coordinator_and_process(tmp_path):
  from launch import local
  port = local.free_port()
  out = subprocess.run(
      [sys.executable, '-m', 't5x_like.train', '--gin_file=gin_configs/examples/tiny_decoder_pretrain.gin',
       f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2', '--process_id=1',
       '--distributed_timeout_secs=3'],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert out.returncode == exit_codes.PEER_LOST, out.stderr[-2000:]
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith(f'error: process 1 of 2 could not join the coordinator at 127.0.0.1:{port} '
                         'within 3 s'), last


def test_ctrl_c_finishes_the_save_in_flight_and_exits_130_without_a_traceback(long_export,
                                                                              tmp_path):
  run = tmp_path / 'run'
  argv = [sys.executable, '-m', 't5x_like.train',
          *_export_args(run, 200, long_export, '--gin.TrainerConfig.checkpoint_every=1')]
  # (A save starts at every step, so Ctrl-C nearly always finds one being written.)
  with subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                        text=True) as proc:
    try:
      lines = []
      deadline = time.monotonic() + 300
      while not any(l.startswith('step   5/200') for l in lines[-1:]):
        assert time.monotonic() < deadline and proc.poll() is None, ''.join(lines[-30:])
        lines.append(proc.stdout.readline())
      proc.send_signal(signal.SIGINT)
      out = ''.join(lines) + proc.communicate(timeout=120)[0]
    finally:
      if proc.poll() is None:
        proc.kill()
  assert proc.returncode == exit_codes.INTERRUPTED, out[-3000:]
  assert 'Traceback' not in out, out[-3000:]
  # (a newline before it ends a terminal's echoed ^C; in a log it was a blank line)
  assert re.search(r'[^\n]\nCtrl-C: stopping after this step \(Ctrl-C again to stop at once\)\n', out)
  last = out.strip().splitlines()[-1]
  match = re.fullmatch(rf'interrupted after step (\d+); the last checkpoint is step (\d+) in '
                       rf'{re.escape(str(run))}/checkpoints', last)
  assert match, last
  stopped, saved = int(match.group(1)), int(match.group(2))
  assert stopped - 1 <= saved <= stopped and steps_on_disk(run)[-1] == saved
  assert not [p.name for p in (run / 'checkpoints').iterdir() if not p.name.isdigit()]  # all committed


# --- real processes: 2 x 4 devices through launch/local.py -------------------------------------------

def _train_args(model_dir, steps, text, *extra):
  return ['--gin_file=gin_configs/examples/tiny_decoder_pretrain.gin',
          f"--gin.MODEL_DIR='{model_dir}'", f'--gin.TRAIN_STEPS={steps}',
          f"--gin.TRAIN_FILES=['{text['train']}']", f"--gin.VALIDATION_FILES=['{text['validation']}']",
          '--gin.MeshConfig.data=2', '--gin.MeshConfig.fsdp=4', '--gin.TrainerConfig.log_every=1',
          '--gin.TrainerConfig.checkpoint_every=100', '--gin.TrainerConfig.eval_every=0', *extra]


def _export_args(model_dir, steps, export, *extra):
  """The same decoder (500 tokens, 32 long) on conftest.py's long_export, for the tests of stopping
  and failing, where the input path does not matter: no TensorFlow to start in each process."""
  return ['--gin_file=gin_configs/examples/tiny_decoder_from_export.gin',
          f"--gin.EXPORT_DIR='{export}'", f"--gin.MODEL_DIR='{model_dir}'",
          f'--gin.TRAIN_STEPS={steps}', '--gin.VOCAB_SIZE=500', '--gin.SEQUENCE_LENGTH=32',
          '--gin.BATCH_SIZE=8', '--gin.MeshConfig.data=2', '--gin.MeshConfig.fsdp=4',
          '--gin.TrainerConfig.log_every=1', '--gin.TrainerConfig.checkpoint_every=100',
          '--gin.train.eval_data=None', *extra]


@contextlib.contextmanager
def _launcher(train_args, own_process_group=False):
  """launch.local in its own process (no --log_dir): yields it and its log folder (from stderr). On the
  way out, however the test went, it is stopped if still running (SIGTERM, which it passes on to its
  workers, then SIGKILL) and its stderr pipe is closed. `own_process_group`: as a terminal's
  foreground job, which Ctrl-C reaches whole."""
  with subprocess.Popen([sys.executable, '-m', 'launch.local', '--num_processes=2',
                         '--devices_per_process=4', '--', *train_args], cwd=REPO,
                        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                        start_new_session=own_process_group) as proc:
    try:
      first = proc.stderr.readline()
      assert 'logs in ' in first, first
      yield proc, pathlib.Path(first.split('logs in ')[1].split('/process_*')[0])
    finally:
      if proc.poll() is None:
        proc.terminate()
        try:
          proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
          proc.kill()


def _wait_for(path, text, proc, timeout=300):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if path.exists() and text in path.read_text():
      return
    assert proc.poll() is None, f'launcher exited {proc.returncode} before {text!r} in {path}'
    time.sleep(0.2)
  raise AssertionError(f'{text!r} not in {path} after {timeout} s')


def _worker_pid(launcher, process_id):
  children = pathlib.Path(f'/proc/{launcher.pid}/task/{launcher.pid}/children').read_text().split()
  for pid in children:
    if f'--process_id={process_id}' in pathlib.Path(f'/proc/{pid}/cmdline').read_text():
      return int(pid)
  raise AssertionError(f'no worker {process_id} among {children}')


def test_two_processes_sigterm_save_one_step_exit_75_and_resume_bit_exactly(small_text, tmp_path,
                                                                            monkeypatch):
  from launch import local
  # The run that compiles the step fills a compilation cache; the preempted run and its resumption
  # load it (t5x_like/compilation_cache.py), as a pod's restarts would, and must still match it.
  monkeypatch.setenv('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  cache = f'--compilation_cache_dir={tmp_path / "cache"}'
  # Room for the notice: the hosts agree on the step to stop at through jax's coordination service,
  # which took over a second (5 steps of 0.23 s) on a loaded 2-core machine; past the last step the run
  # simply ends.
  n = 20
  straight = tmp_path / 'straight'
  outs = local.launch(_train_args(straight, n, small_text, cache), 2, 4, stream=None, timeout=600,
                      log_dir=str(tmp_path / 'logs_straight'))
  assert 'compiled; compilation cache at' in outs[0], outs[0][-3000:]
  assert "mesh {'data': 2, 'fsdp': 4, 'tensor': 1} on 8 cpu devices, 2 host(s)" in outs[0]
  assert f'step {n}/{n}' in outs[0] and f'step {n}/{n}' not in outs[1]  # host 0 alone reports
  assert any(p.name.startswith('jit_guarded_train_step') for p in (tmp_path / 'cache').iterdir())
  run = tmp_path / 'run'
  with _launcher(_train_args(run, n, small_text, cache)) as (launcher, logs):
    _wait_for(logs / 'process_0.log', f'step  3/{n}', launcher)
    launcher.send_signal(signal.SIGTERM)  # passed on to both workers, as a pod's notice reaches every host
    assert launcher.wait(timeout=120) == exit_codes.PREEMPTED, launcher.stderr.read()[-3000:]
  log0 = (logs / 'process_0.log').read_text()
  saved = int(log0.split('preempted at step ')[1].split(':')[0])
  assert 'StepAlreadyExistsError' not in log0 + (logs / 'process_1.log').read_text()
  assert steps_on_disk(run)[-1] == saved
  assert sorted(p.name for p in (run / 'checkpoints' / str(saved) / 'data').iterdir() if p.is_dir()) == [
      'host_0_of_2', 'host_1_of_2']
  outs = local.launch(_train_args(run, n, small_text, cache), 2, 4, stream=None, timeout=600,
                      log_dir=str(tmp_path / 'logs_resume'))
  assert f'Resuming from checkpoint at step {saved}' in outs[0] and f'step {n}/{n}' in outs[0]
  # (Process 0's: here process 1 compiles again. jax strips the device assignment from the cache key
  # on GPU only, "invariant between processes"; on CPU the processes' keys differ.)
  assert 'compiled train step' in outs[0] and '(loaded from the compilation cache)' in outs[0], outs[0]
  assert tb_losses(run) == tb_losses(straight)  # every step 1..n, bit for bit


@pytest.mark.parametrize('how', ['SIGKILL', 'SIGSTOP'])
def test_a_dead_or_hung_peer_stops_the_job_with_a_clear_exit(how, long_export, tmp_path):
  with _launcher(_export_args(tmp_path / 'run', 200, long_export,
                             '--gin.TrainerConfig.step_timeout_secs=5')) as (launcher, logs):
    _wait_for(logs / 'process_0.log', 'step   3/200', launcher)
    victim = _worker_pid(launcher, 1)
    t0 = time.monotonic()
    os.kill(victim, getattr(signal, how))
    code = launcher.wait(timeout=120)
    err = launcher.stderr.read()
  assert time.monotonic() - t0 < 40, err
  if how == 'SIGKILL':  # the launcher sees it die and stops process 0
    assert code == 128 + signal.SIGKILL and 'process 1 failed first (exit -9' in err, err
    # ... which, when its collective with the dead one fails first, says so in one line
    log = (logs / 'process_0.log').read_text()
    assert 'Traceback' not in log, log[-3000:]
  else:  # process 0 waits in a collective until its step watchdog gives up
    assert code == exit_codes.PEER_LOST and 'process 0 failed first (exit 4' in err, err
    assert 'no train step finished for' in (logs / 'process_0.log').read_text()
  assert f'logs in {logs}' in err


def test_ctrl_c_in_a_terminal_stops_the_launcher_and_both_processes_in_one_line(long_export,
                                                                                tmp_path):
  with _launcher(_export_args(tmp_path / 'run', 200, long_export),
                 own_process_group=True) as (launcher, logs):
    _wait_for(logs / 'process_0.log', 'step   3/200', launcher)
    workers = [_worker_pid(launcher, i) for i in (0, 1)]
    os.killpg(launcher.pid, signal.SIGINT)  # Ctrl-C: the launcher and both workers
    code = launcher.wait(timeout=120)
    err = launcher.stderr.read()
  assert code == exit_codes.INTERRUPTED and 'Traceback' not in err, err
  assert err.strip().splitlines()[-1] == ('launch.local: interrupted (Ctrl-C); where each process '
                                          'stopped is at the end of its log'), err
  assert re.search(r'interrupted after step \d+; the last checkpoint is step \d+ in ',
                   (logs / 'process_0.log').read_text())
  for pid in workers:  # none left behind
    with pytest.raises(ProcessLookupError):
      os.kill(pid, 0)


def test_ctrl_c_to_one_of_two_processes_stops_both_at_the_same_log_step_with_its_save(long_export,
                                                                                      tmp_path):
  # Each process raised KeyboardInterrupt wherever it was: the one signalled left the job, its peer
  # waited in a collective, and the save in flight was never committed. Now the processes agree at a
  # log step (interrupts.py) and stop there together, finishing the save they were writing.
  run = tmp_path / 'run'
  with _launcher(_export_args(run, 200, long_export, '--gin.TrainerConfig.log_every=5',
                             '--gin.TrainerConfig.checkpoint_every=1')) as (launcher, logs):
    _wait_for(logs / 'process_0.log', 'step   5/200', launcher)
    os.kill(_worker_pid(launcher, 1), signal.SIGINT)  # (process 0 hears of it only from process 1)
    code = launcher.wait(timeout=120)
    err = launcher.stderr.read()
  for i in (0, 1):
    assert 'Traceback' not in (logs / f'process_{i}.log').read_text()
  log0 = (logs / 'process_0.log').read_text()  # (process 0 speaks for the job)
  stop = re.search(r'interrupted after step (\d+); the last checkpoint is step (\d+) in ', log0)
  assert stop, log0[-3000:]
  # ... the same step on both, a log step, whose save both finished: its commit waits for every process
  assert stop.group(1) == stop.group(2) and int(stop.group(1)) % 5 == 0, stop.group(0)
  assert steps_on_disk(run)[-1] == int(stop.group(1))
  assert not [p.name for p in (run / 'checkpoints').iterdir() if not p.name.isdigit()]  # all committed
  # ... and both exited 130 by themselves, which the launcher reports as a Ctrl-C, not a failure
  assert code == exit_codes.INTERRUPTED and 'stopping the others' not in err, err
  assert err.strip().splitlines()[-1] == ('launch.local: interrupted (Ctrl-C); where each process '
                                          'stopped is at the end of its log'), err
  assert ('Ctrl-C: stopping with the other processes at the next log step (every 5 steps) (Ctrl-C '
          'again to stop at once)') in (logs / 'process_1.log').read_text()


def test_sigint_to_launch_local_alone_reaches_both_processes_at_once(long_export, tmp_path):
  # (kill -INT <launcher>, a supervisor: the workers run in sessions of their own and hear it from the
  # launcher. Before, it never reached them: the launcher waited a minute, then stopped them.)
  with _launcher(_export_args(tmp_path / 'run', 200, long_export)) as (launcher, logs):
    _wait_for(logs / 'process_0.log', 'step   3/200', launcher)
    workers = [_worker_pid(launcher, i) for i in (0, 1)]
    assert {os.getsid(pid) for pid in workers} == set(workers)  # each leads its own session
    t0 = time.monotonic()
    launcher.send_signal(signal.SIGINT)
    code = launcher.wait(timeout=120)
    err = launcher.stderr.read()
  assert time.monotonic() - t0 < 30, err
  assert code == exit_codes.INTERRUPTED and 'Traceback' not in err, err
  assert err.strip().splitlines()[-1] == ('launch.local: interrupted (Ctrl-C); where each process '
                                          'stopped is at the end of its log'), err
  assert re.search(r'interrupted after step \d+; the last checkpoint is step \d+ in ',
                   (logs / 'process_0.log').read_text())
  for pid in workers:
    with pytest.raises(ProcessLookupError):
      os.kill(pid, 0)


def test_a_second_trainer_on_a_live_run_is_refused_and_a_killed_launchers_workers_save_and_stop(
    long_export, tmp_path):
  # Two claims on one running job (its start-up is most of the cost): a second trainer on the same
  # MODEL_DIR stops in one line before touching it (before the writer lock, Orbax's start in the
  # second one removed the first one's save in flight), and SIGKILL to the launcher, which passes
  # nothing on, still stops both workers with a save (PR_SET_PDEATHSIG); their lock goes with them.
  from t5x_like import writer_lock
  run = tmp_path / 'run'
  with _launcher(_export_args(run, 200, long_export, '--gin.TrainerConfig.checkpoint_every=1')) as (
      launcher, logs):
    _wait_for(logs / 'process_0.log', 'step   3/200', launcher)
    workers = [_worker_pid(launcher, i) for i in (0, 1)]
    second = subprocess.run([sys.executable, '-m', 't5x_like.train',
                             *_export_args(run, 200, long_export)], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == exit_codes.CONFIG_ERROR, second.stderr[-3000:]
    assert second.stderr.strip().splitlines()[-1].startswith(
        f"error: MODEL_DIR='{run}' is in use by another trainer (pid {workers[0]} on "), second.stderr
    assert launcher.poll() is None
    _wait_for(logs / 'process_0.log', 'step  10/200', launcher)  # ... and training, its saves whole
    launcher.kill()
    launcher.wait(timeout=60)
    deadline = time.monotonic() + 120
    while any(os.path.exists(f'/proc/{pid}') and pathlib.Path(f'/proc/{pid}/stat').read_text(
        ).split()[2] != 'Z' for pid in workers):
      assert time.monotonic() < deadline, 'the workers outlived their launcher by 2 minutes'
      time.sleep(0.5)
  saved = steps_on_disk(run)
  for i in (0, 1):
    log = (logs / f'process_{i}.log').read_text()
    assert 'Traceback' not in log, log[-3000:]
    if i == 0:
      stop = re.search(r'preempted at step (\d+): checkpoint saved and committed', log)
      assert stop and int(stop.group(1)) == saved[-1], (log[-2000:], saved)
  assert not [p.name for p in (run / 'checkpoints').iterdir() if not p.name.isdigit()]
  writer_lock.acquire(str(run)).close()  # (free: it went with process 0)


@pytest.mark.parametrize('sig', ['SIGINT', 'SIGTERM'])
def test_launch_local_passes_a_signal_on_to_its_train_command_and_does_not_restart_it(
    sig, long_export, tmp_path):
  # `python -m launch local` (one process): the signal reaches the train command once, which finishes
  # the save in flight (a save at every step) and exits 130 or 75; 75 is restartable, but the
  # launcher itself was told to stop. Before, subprocess.run SIGKILLed the train command 0.25 s after
  # the launcher's Ctrl-C, and the launcher ended in a traceback.
  run = tmp_path / 'run'
  argv = [sys.executable, '-m', 'launch', 'local', '--max_restarts=2', '--',
          *_export_args(run, 200, long_export, '--gin.TrainerConfig.checkpoint_every=1')]
  log = tmp_path / 'out.log'
  with open(log, 'w') as out, subprocess.Popen(argv, cwd=REPO, stdout=out,
                                               stderr=subprocess.STDOUT) as proc:
    try:
      _wait_for(log, 'step   5/200', proc)
      proc.send_signal(getattr(signal, sig))
      code = proc.wait(timeout=120)
    finally:
      if proc.poll() is None:
        proc.kill()
  text = log.read_text()
  assert 'Traceback' not in text and 'restart 1/2' not in text, text[-3000:]
  assert text.count('compiled train step') == 1, text[-3000:]
  if sig == 'SIGINT':
    assert code == exit_codes.INTERRUPTED, text[-3000:]
    assert re.search(r'interrupted after step \d+; the last checkpoint is step \d+ in ', text)
  else:
    assert code == exit_codes.PREEMPTED, text[-3000:]
    assert 'preempted at step ' in text
  assert text.strip().splitlines()[-1] == (f'launch: stopped by {sig}, passed on to the job; exit '
                                           f'{code} (the same command resumes it)'), text[-3000:]
  assert not [p.name for p in (run / 'checkpoints').iterdir() if not p.name.isdigit()]  # all committed


def test_two_processes_agree_on_the_fallback_when_only_one_host_cannot_read_its_part(small_text,
                                                                                      tmp_path):
  from launch import local
  run = tmp_path / 'run'
  every2 = '--gin.TrainerConfig.checkpoint_every=2'
  local.launch(_train_args(run, 4, small_text, every2), 2, 4, stream=None, timeout=600,
               log_dir=str(tmp_path / 'logs_first'))
  first = tb_losses(run)
  assert steps_on_disk(run) == [1, 2, 4] and sorted(first) == [1, 2, 3, 4]
  # Only process 1 reads this file: process 0 alone would restore step 4 and train on.
  damaged, = (run / 'checkpoints' / '4' / 'data' / 'host_1_of_2').glob('iterator.data*')
  with open(damaged, 'r+b') as fh:
    fh.truncate(16)
  with pytest.raises(local.ProcessesFailed) as info:
    local.launch(_train_args(run, 6, small_text, every2), 2, 4, stream=None, timeout=600,
                 log_dir=str(tmp_path / 'logs_refused'))
  assert info.value.returncode == exit_codes.CONFIG_ERROR
  outs = [(tmp_path / 'logs_refused' / f'process_{i}.log').read_text() for i in (0, 1)]
  assert 'could not be read on another host' in outs[0] and '--restore_step=2' in outs[0], outs[0]
  assert f'{run}/checkpoints/4/data: ' in outs[1] and 'is damaged' in outs[1], outs[1][-3000:]
  assert steps_on_disk(run) == [1, 2, 4]  # refused: nothing moved, nothing trained
  before = set((run / 'train').iterdir())
  outs = local.launch(_train_args(run, 6, small_text, every2, '--restore_fallback'), 2, 4,
                      stream=None, timeout=600, log_dir=str(tmp_path / 'logs_fallback'))
  assert 'falling back to step 2' in outs[0], outs[0][-3000:]
  assert 'step 6/6' in outs[0] and steps_on_disk(run) == [2, 4, 6]
  assert len(list((run / 'set_aside_checkpoints').glob('*/4/state'))) == 1
  new_files = [f for f in (run / 'train').iterdir() if f not in before]
  resumed = tb_losses_of(new_files)
  assert sorted(resumed) == [3, 4, 5, 6]
  assert resumed[3] == first[3] and resumed[4] == first[4]  # from step 2's state and data position
