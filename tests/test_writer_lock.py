"""One writer per model dir (t5x_like/writer_lock.py); with real trainer processes in
test_reliability_processes.py."""
import json
import os
import socket
import sys
import time

import pytest

from t5x_like import checkpointing, writer_lock


def test_a_held_model_dir_is_refused_in_one_line_naming_the_holder_until_it_lets_go(tmp_path):
  run = tmp_path / 'run'
  held = writer_lock.acquire(str(run))  # (makes the folder)
  with pytest.raises(writer_lock.ModelDirInUse) as e:
    writer_lock.acquire(str(run))
  msg = str(e.value)
  assert '\n' not in msg
  assert msg.startswith(f"MODEL_DIR='{run}' is in use by another trainer (pid {os.getpid()} on "
                        f'{socket.gethostname()}, started '), msg
  assert f'see {run / writer_lock.LOCK_NAME}' in msg
  holder = json.loads((run / writer_lock.LOCK_NAME).read_text())
  assert holder['pid'] == os.getpid() and holder['host'] == socket.gethostname()
  assert holder['command'].split()[0] == sys.executable
  held.close()
  again = writer_lock.acquire(str(run))
  assert again is not None
  again.close()


def test_a_lock_file_of_unknown_content_still_names_what_holds_it(tmp_path):
  held = writer_lock.acquire(str(tmp_path))
  (tmp_path / writer_lock.LOCK_NAME).write_text('not json')
  with pytest.raises(writer_lock.ModelDirInUse, match=r"is in use by another process \(see "):
    writer_lock.acquire(str(tmp_path))
  held.close()


def test_urls_take_no_lock():
  assert writer_lock.acquire('gs://bucket/run') is None


def test_a_checkpointer_on_a_held_model_dir_leaves_the_holders_save_in_flight_alone(tmp_path):
  # Orbax removes the temporary step folders it finds when it opens a checkpoint dir: opened by a
  # second trainer, it removed the first one's save being written.
  run = tmp_path / 'run'
  in_flight = run / 'checkpoints' / '7.orbax-checkpoint-tmp'
  in_flight.mkdir(parents=True)
  held = writer_lock.acquire(str(run))
  with pytest.raises(writer_lock.ModelDirInUse):
    checkpointing.Checkpointer(str(run), save_every=1)
  assert in_flight.is_dir()
  held.close()
  ck = checkpointing.Checkpointer(str(run), save_every=1)  # the holder gone, its leftovers go
  try:
    deadline = time.monotonic() + 60  # (Orbax removes them in a thread of its own)
    while in_flight.exists():
      assert time.monotonic() < deadline, 'Orbax no longer removes temporary folders: see writer_lock'
      time.sleep(0.1)
    with pytest.raises(writer_lock.ModelDirInUse):  # ... and this one holds the lock in turn
      writer_lock.acquire(str(run))
  finally:
    ck.close()
  writer_lock.acquire(str(run)).close()  # close() let it go
