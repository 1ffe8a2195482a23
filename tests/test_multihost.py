"""Real multi-process training on localhost through launch/local.py: 2 processes x 4 CPU devices, gloo
collectives, one global 2x4 mesh; both hosts write one Orbax checkpoint (each its own data-iterator
state) and resume from it."""
import pathlib

from launch import local

REPO = pathlib.Path(__file__).resolve().parents[1]


def _train(model_dir, steps, text, tmp_path):
  args = ['--gin_file=gin_configs/examples/tiny_decoder_pretrain.gin',
          f"--gin.MODEL_DIR='{model_dir}'", f'--gin.TRAIN_STEPS={steps}',
          f"--gin.TRAIN_FILES=['{text['train']}']", f"--gin.VALIDATION_FILES=['{text['validation']}']",
          '--gin.MeshConfig.data=2', '--gin.MeshConfig.fsdp=4',
          '--gin.TrainerConfig.checkpoint_every=5', '--gin.TrainerConfig.log_every=5']
  return local.launch(args, num_processes=2, devices_per_process=4, stream=None, timeout=600,
                      log_dir=str(tmp_path))


def test_two_processes_train_save_and_resume(tmp_path, small_text, monkeypatch):
  monkeypatch.chdir(REPO)
  model_dir = tmp_path / 'run'
  outs = _train(model_dir, 10, small_text, tmp_path)
  assert "mesh {'data': 2, 'fsdp': 4, 'tensor': 1} on 8 cpu devices, 2 host(s)" in outs[0]
  assert 'step 10/10' in outs[0] and 'step 10/10' not in outs[1]  # host 0 alone reports
  data_dir = model_dir / 'checkpoints' / '10' / 'data'
  assert sorted(p.name for p in data_dir.iterdir() if p.is_dir()) == ['host_0_of_2', 'host_1_of_2']
  outs = _train(model_dir, 15, small_text, tmp_path)
  assert 'Resuming from checkpoint at step 10' in outs[0] and 'step 15/15' in outs[0]
