"""Real multi-process training on localhost through launch/local.py: 2 processes x 4 CPU devices, gloo
collectives, one global 2x4 mesh, and an error on one of them. (Training, saving each host's iterator
state in one Orbax checkpoint and resuming bit for bit: test_reliability_processes.py's SIGTERM test.)"""
import pathlib

import pytest

from launch import local
from t5x_like import exit_codes

REPO = pathlib.Path(__file__).resolve().parents[1]


def _train(model_dir, steps, text, tmp_path, *extra):
  args = ['--gin_file=gin_configs/examples/tiny_decoder_pretrain.gin',
          f"--gin.MODEL_DIR='{model_dir}'", f'--gin.TRAIN_STEPS={steps}',
          f"--gin.TRAIN_FILES=['{text['train']}']", f"--gin.VALIDATION_FILES=['{text['validation']}']",
          '--gin.MeshConfig.data=2', '--gin.MeshConfig.fsdp=4',
          '--gin.TrainerConfig.checkpoint_every=5', '--gin.TrainerConfig.log_every=5', *extra]
  return local.launch(args, num_processes=2, devices_per_process=4, stream=None, timeout=600,
                      log_dir=str(tmp_path))


# Process 1 raises an unexpected error at its 4th batch; process 0 then waits in the step's collective.
_FAILING_WORKER = local.WORKER.replace('from t5x_like import train; ', """from t5x_like import host_batches, train
calls = [0]
next_batch = host_batches.HostBatchIterator.__next__
def failing_next(self):
  calls[0] += 1
  if jax.process_index() == 1 and calls[0] == 4:
    raise RuntimeError('injected failure on process 1')
  return next_batch(self)
host_batches.HostBatchIterator.__next__ = failing_next
""")


def test_an_error_on_one_process_ends_the_job_at_once_naming_that_process(tmp_path, small_text,
                                                                          monkeypatch):
  """Before, the failed process waited in jax.distributed's shutdown barrier, the other one's step
  watchdog ended the job a minute later, and the launcher blamed process 0 (exit 4)."""
  monkeypatch.chdir(REPO)
  monkeypatch.setattr(local, 'WORKER', _FAILING_WORKER)
  with pytest.raises(local.ProcessesFailed) as info:
    _train(tmp_path / 'run', 50, small_text, tmp_path, '--gin.TrainerConfig.log_every=1',
           '--gin.TrainerConfig.step_timeout_secs=300')
  assert (info.value.process, info.value.returncode) == (1, exit_codes.CRASHED), str(info.value)
  assert 'RuntimeError: injected failure on process 1' in str(info.value)
  assert 'no train step finished' not in (tmp_path / 'process_0.log').read_text()


# Process 1 is given one more gin binding, as a host whose command or checkout differs.
_DIFFERENT_WORKER = local.WORKER.replace(
    'sys.exit(train.main(sys.argv[1:]))',
    "sys.exit(train.main(sys.argv[1:] + (['--gin.TrainerConfig.log_every=3'] "
    "if '--process_id=1' in sys.argv else [])))")


# Process 1 has 3 devices, not 4: a GPU node with a failed GPU.
_DEVICE_LOST_WORKER = ("import os, sys; os.environ['XLA_FLAGS'] = ("
                       "'--xla_force_host_platform_device_count=3' if '--process_id=1' in sys.argv "
                       "else os.environ['XLA_FLAGS']); " + local.WORKER)


@pytest.mark.parametrize('worker, message', [
    # Before, each host trained the program its own config built: here only the logging differed
    # and the job ran on; another batch or model would wait in collectives that never match.
    (_DIFFERENT_WORKER, 'have another gin config than process 0: every process of a job must run '
                        'the same code, jax and config'),
    # Before, the 7 devices made `MeshConfig {...} does not divide the 7 devices`: a config error to
    # the reader, who would change the mesh instead of the host.
    (_DEVICE_LOST_WORKER, 'have other devices than process 0 (process 0: 4 x cpu, process 1: 3 x '
                          'cpu): a host that lost an accelerator?'),
], ids=['config', 'devices'])
def test_processes_that_differ_are_named_on_every_process_before_training(
    worker, message, tmp_path, small_text, monkeypatch):
  monkeypatch.chdir(REPO)
  monkeypatch.setattr(local, 'WORKER', worker)
  with pytest.raises(local.ProcessesFailed) as info:
    _train(tmp_path / 'run', 10, small_text, tmp_path)
  assert info.value.returncode == exit_codes.CONFIG_ERROR, str(info.value)
  for p in (0, 1):
    log = (tmp_path / f'process_{p}.log').read_text()
    assert f'error: process(es) [1] of 2 {message}' in log, log[-2000:]
  assert not (tmp_path / 'run' / 'checkpoints').exists()
