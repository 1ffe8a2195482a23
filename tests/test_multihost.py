"""Real multi-process training on localhost: 2 processes x 4 CPU devices, gloo collectives, one global
2x4 mesh; both hosts save one Orbax checkpoint (each its own data-iterator state) and resume from it."""
import os
import pathlib
import socket
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]

WORKER = r'''
import sys
import jax
jax.config.update('jax_cpu_collectives_implementation', 'gloo')
from t5x_like import train
sys.exit(train.main(sys.argv[1:]))
'''


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _launch(model_dir, steps, text):
  port = _free_port()
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4', PYTHONUNBUFFERED='1')
  procs = []
  for pid in range(2):
    args = [sys.executable, '-c', WORKER, '--gin_file=gin_configs/examples/tiny_decoder_pretrain.gin',
            f"--gin.MODEL_DIR='{model_dir}'", f'--gin.TRAIN_STEPS={steps}',
            f"--gin.TRAIN_FILES=['{text['train']}']", f"--gin.VALIDATION_FILES=['{text['validation']}']",
            '--gin.MeshConfig.data=2', '--gin.MeshConfig.fsdp=4', '--gin.TrainerConfig.checkpoint_every=5',
            '--gin.TrainerConfig.log_every=5', f'--coordinator_address=127.0.0.1:{port}',
            '--num_processes=2', f'--process_id={pid}']
    procs.append(subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  return outs


def test_two_processes_train_save_and_resume(tmp_path, small_text):
  model_dir = tmp_path / 'run'
  outs = _launch(model_dir, 10, small_text)
  assert "mesh {'data': 2, 'fsdp': 4, 'tensor': 1} on 8 cpu devices, 2 host(s)" in outs[0]
  assert 'step 10/10' in outs[0] and 'step 10/10' not in outs[1]  # host 0 alone reports
  data_dir = model_dir / 'checkpoints' / '10' / 'data'
  assert sorted(p.name for p in data_dir.iterdir() if p.is_dir()) == ['host_0_of_2', 'host_1_of_2']
  outs = _launch(model_dir, 15, small_text)
  assert 'Resuming from checkpoint at step 10' in outs[0] and 'step 15/15' in outs[0]
