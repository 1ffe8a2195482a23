"""A full disk, for real: MODEL_DIR on a tmpfs of a few MiB (mounted in a private mount namespace with
`unshare`, so nothing outside the test sees it). Too small for one checkpoint: refused before the
compile. Room for one: the save that does not fit stops the run in one line, exit 5, and the
checkpoint saved before it resumes the run exactly elsewhere."""
import errno
import logging
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from launch import restarts
from t5x_like import checkpointing, exit_codes, storage_space

from conftest import steps_on_disk

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = '--gin_file=gin_configs/examples/tiny_decoder_pretrain.gin'
# The tiny decoder's state (parameters and Adam's two moments, fp32) is 4.0 MiB before compression.
ARGS = [TINY, '--gin.TRAIN_STEPS=60', '--gin.TrainerConfig.checkpoint_every=20']


def test_storage_errors_are_recognised_in_python_and_tensorstore_form():
  assert storage_space.is_storage_full(OSError(errno.ENOSPC, 'No space left on device'))
  assert storage_space.is_storage_full(OSError(errno.EDQUOT, 'Disk quota exceeded'))
  tensorstore = ValueError('RESOURCE_EXHAUSTED: Error writing "state/0" in OCDBT database at local '
                           'file "/x/checkpoints/20.orbax-checkpoint-tmp/state/": Failed to write 4 '
                           "bytes to file 12: [os_error_code='28']")
  assert storage_space.is_storage_full(tensorstore)
  try:  # the cause of a wrapped error counts too
    try:
      raise tensorstore
    except ValueError as e:
      raise RuntimeError('save failed') from e
  except RuntimeError as wrapped:
    assert storage_space.is_storage_full(wrapped)
  assert not storage_space.is_storage_full(OSError(errno.EACCES, 'Permission denied'))
  assert not storage_space.is_storage_full(ValueError('RESOURCE_EXHAUSTED: out of memory'))
  msg = str(storage_space.save_failed(tensorstore, '/x/checkpoints', step=40, latest=1))
  # The step is the failed folder's (an asynchronous save's error surfaces at a later step).
  assert msg.startswith('the checkpoint of step 20 could not be written to /x/checkpoints: '
                        'No space left on device')
  assert 'latest: step 1' in msg and '\n' not in msg
  # Orbax's background records of that failure are dropped; any other record is kept.
  drop = checkpointing.DropOrbaxRecordsSaidInOneLine()
  assert not drop.filter(logging.makeLogRecord({'msg': str(tensorstore)}))
  assert drop.filter(logging.makeLogRecord({'msg': 'Saving checkpoint at step 20'}))
  # So are asyncio's reports of the writes that failed beside it, whatever future held them (a
  # gather's is a _GatheringFuture: seen in CI, once, after the one-line error).
  checkpointing.quiet_what_failed_reads_and_writes_leave_behind()
  asyncio_log = logging.getLogger('asyncio')
  for name in ('Task', 'Future', '_GatheringFuture'):
    record = logging.makeLogRecord({'msg': f'{name} exception was never retrieved',
                                     'exc_info': (ValueError, tensorstore, None)})
    assert not all(f.filter(record) for f in asyncio_log.filters), name
  other = logging.makeLogRecord({'msg': '_GatheringFuture exception was never retrieved',
                                 'exc_info': (ValueError, ValueError('something else'), None)})
  assert all(f.filter(other) for f in asyncio_log.filters)


def test_room_check_reads_the_real_free_space(tmp_path):
  free = shutil.disk_usage(tmp_path).free
  with pytest.raises(storage_space.StorageFull, match=r'one checkpoint of this run holds about'):
    storage_space.check_room(tmp_path / 'not_yet' / 'checkpoints', 2 * free, keep=3)
  said = []
  storage_space.check_room(tmp_path, free // 3, keep=3, say=said.append)
  assert len(said) == 1 and 'keeping 3 (TrainerConfig.keep_checkpoints)' in said[0]
  said.clear()
  storage_space.check_room(tmp_path, free // 100, keep=3, say=said.append)
  assert said == []
  storage_space.check_room('gs://bucket/run/checkpoints', 10**18, keep=3)  # not local: no check
  assert exit_codes.STORAGE_FULL == 5 and not exit_codes.is_restartable(exit_codes.STORAGE_FULL)
  assert restarts.describe(exit_codes.STORAGE_FULL) == 'STORAGE_FULL'


def _train_args(model_dir) -> list:
  return [*ARGS, f'--gin.MODEL_DIR="{model_dir}"']


def _train_cmd(model_dir) -> list:
  return [sys.executable, '-m', 't5x_like.train', *_train_args(model_dir)]


def _loss(out: str, step: int) -> str:
  m = re.search(rf'^step +{step}/60 \| loss (\S+)', out, re.M)
  assert m, out[-3000:]
  return m.group(1)


def test_a_full_disk_is_refused_before_the_compile_or_stops_the_save_keeping_what_was_saved(tmp_path):
  small, one = tmp_path / 'small', tmp_path / 'one'
  copy = tmp_path / 'copy'
  small.mkdir()
  one.mkdir()
  script = f"""
    mount -t tmpfs -o size=3m tmpfs {small} || exit 90
    mount -t tmpfs -o size=6m tmpfs {one} || exit 90
    {shlex.join(_train_cmd(small / 'run'))} > {tmp_path}/small.out 2>&1; echo $? > {tmp_path}/small.rc
    {shlex.join(_train_cmd(one / 'run'))} > {tmp_path}/one.out 2>&1; echo $? > {tmp_path}/one.rc
    ls {one}/run/checkpoints > {tmp_path}/one.ls
    cp -r {one}/run {copy}
  """
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  # -r: root in a user namespace, so the mounts need no privileges outside it.
  done = subprocess.run(['unshare', '-rm', 'bash', '-c', script], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]

  # 3 MiB, less than one checkpoint: one line naming the folder and both sizes, before the compile.
  out = (tmp_path / 'small.out').read_text()
  assert int((tmp_path / 'small.rc').read_text()) == exit_codes.STORAGE_FULL, out[-3000:]
  errors = [l for l in out.splitlines() if l.startswith('error:')]
  assert errors == [f'error: {small}/run/checkpoints has 3.0 MiB free, and one checkpoint of this run '
                    'holds about 4.0 MiB (parameters and optimizer state): free space there or '
                    'choose another MODEL_DIR'], out[-3000:]
  assert 'compiled train step' not in out and 'Traceback' not in out

  # 6 MiB, room for the first save (step 1) only: the save at step 20 fails, and the run stops in one
  # line, exit 5, by the next log step (step 30) rather than training on to the next save.
  out = (tmp_path / 'one.out').read_text()
  assert int((tmp_path / 'one.rc').read_text()) == exit_codes.STORAGE_FULL, out[-3000:]
  assert 'note: ' in out and 'keeping 3 (TrainerConfig.keep_checkpoints)' in out
  errors = [l for l in out.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and errors[0].startswith(
      f'error: the checkpoint of step 20 could not be written to {one}/run/checkpoints: No space '
      'left on device'), out[-3000:]
  assert 'latest: step 1)' in errors[0] and 'run the same command again to resume' in errors[0]
  assert 'Traceback' not in out and 'Event loop is closed' not in out, out[-3000:]
  assert re.search(r'^step 20/60 ', out, re.M) and not re.search(r'^step 40/60 ', out, re.M)
  assert (tmp_path / 'one.ls').read_text().split() == ['1', '20.orbax-checkpoint-tmp']

  # Nothing saved was lost: step 1 resumes (the failed folder is removed at start) and trains the
  # same steps again: the loss logged at step 20 (the mean of steps 11-20) is the same to the digit.
  resumed = subprocess.run(_train_cmd(copy), cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'Resuming from checkpoint at step 1' in resumed.stdout
  assert _loss(resumed.stdout, 20) == _loss(out, 20)
  assert steps_on_disk(copy) == [20, 40, 60]
  assert not list((copy / 'checkpoints').glob('*.orbax-checkpoint-tmp'))


def test_two_processes_on_a_full_shared_disk_both_stop_in_one_line_and_the_launcher_exits_5(tmp_path):
  disk = tmp_path / 'disk'
  disk.mkdir()
  launch = [sys.executable, '-m', 'launch.local', '--num_processes', '2', '--devices_per_process', '2',
            '--log_dir', str(tmp_path / 'logs'), '--', *_train_args(disk / 'run')]
  script = f"""
    mount -t tmpfs -o size=6m tmpfs {disk} || exit 90
    {shlex.join(launch)} > {tmp_path}/launch.out 2>&1; echo $? > {tmp_path}/launch.rc
    ls {disk}/run/checkpoints > {tmp_path}/launch.ls
  """
  done = subprocess.run(['unshare', '-rm', 'bash', '-c', script], cwd=REPO,
                        env=dict(os.environ, PYTHONUNBUFFERED='1'), capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  out = (tmp_path / 'launch.out').read_text()
  assert int((tmp_path / 'launch.rc').read_text()) == exit_codes.STORAGE_FULL, out[-3000:]
  first = re.search(r'^error: process (\d) failed first \(exit 5; ', out, re.M)
  assert first, out[-3000:]
  for pid in (0, 1):
    log = (tmp_path / 'logs' / f'process_{pid}.log').read_text()
    errors = [l for l in log.splitlines() if l.startswith('error:')]
    assert 'Traceback' not in log, log[-3000:]
    if pid == int(first.group(1)):
      assert len(errors) == 1 and 'the checkpoint of step 20 could not be written' in errors[0], log[-3000:]
    elif errors:  # the other one says the same (the same full disk) or, when it was waiting for the
      # first one in a collective, that its peer is gone; or nothing, when the launcher's stop came first
      assert len(errors) == 1 and ('the checkpoint of step 20 could not be written' in errors[0] or
                                   'a collective failed because another process of the job is gone'
                                   in errors[0]), log[-3000:]
  assert (tmp_path / 'launch.ls').read_text().split() == ['1', '20.orbax-checkpoint-tmp']
