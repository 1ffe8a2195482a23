"""The preflight: batch shapes without data equal what the real input pipeline gives, the trainer's
train step compiles for a small TPU topology from libtpu's description (no TPU here), and runs that
cannot go are refused in one line: mesh that does not divide, memory over HBM, unknown topology."""
import re
import subprocess
import sys

import pytest

from launch import preflight, targets
from t5x_like import batch_shapes, data, data_seqio

TINY = '--gin_file=gin_configs/examples/tiny_decoder_pretrain.gin'


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
  monkeypatch.chdir(preflight.train_lib.REPO_ROOT)


@pytest.mark.parametrize('family,pack,task', [('decoder', True, 'lm_task'),
                                             ('decoder', False, 'prefix_lm_task'),
                                             ('decoder', True, 'prefix_lm_task'),
                                             ('encdec', True, 'prefix_lm_task')])
def test_batch_shapes_match_the_input_pipeline(family, pack, task, request):
  lengths = {'targets': 32} if task == 'lm_task' else {'inputs': 24, 'targets': 16}
  ds = data.get_dataset(data.DataConfig(request.getfixturevalue(task), lengths, batch_size=8,
                                        pack=pack), family)
  assert batch_shapes.abstract_batch(family, lengths, 8, pack) == data_seqio.abstract_batch(ds.element_spec, 8)


def test_tiny_decoder_compiles_for_v5p_8(capsys):
  r = preflight.preflight([TINY, '--gin.MeshConfig.data=2', '--gin.MeshConfig.fsdp=2'], 'v5p-8')
  out = capsys.readouterr().out
  assert r['device_kind'] == 'TPU v5' and r['num_devices'] == 4
  assert r['mesh'] == {'data': 2, 'fsdp': 2, 'tensor': 1}
  # fp32 parameters + two Adam moments, half of each over fsdp=2 (up to unsharded small leaves).
  full_state = 12 * r['num_params']
  assert full_state / 2 <= r['state_bytes'] < full_state
  assert r['state_bytes'] < r['total_bytes'] < 95 * preflight.GiB
  assert 0.7 < r['xla_flops'] / r['formula_flops_per_step'] < 1.5  # every scanned layer counted
  assert 'compiled by XLA for TPU v5' in out and 'expected step time at 50% MFU' in out
  # A checkpoint holds the whole state once (every shard), whatever the mesh; keep 3 needs room for 4.
  assert full_state <= r['checkpoint_bytes'] < full_state + 1024
  size = r['checkpoint_bytes'] / 2**20
  assert (f'checkpoint: about {size:.1f} MiB a save (parameters and optimizer state, before '
          f'compression); keeping 3 needs about {4 * size:.1f} MiB') in out, out


def test_flops_count_every_microbatch():
  # XLA's cost analysis counts a scan's body once: the microbatch loop must not halve the FLOPs.
  args = [TINY, '--gin.MeshConfig.data=2', '--gin.MeshConfig.fsdp=2']
  one = preflight.preflight(args, 'v5p-8', print_fn=lambda *a: None)
  two = preflight.preflight(args + ['--gin.TrainerConfig.num_microbatches=2'], 'v5p-8',
                            print_fn=lambda *a: None)
  assert two['xla_flops'] == pytest.approx(one['xla_flops'], rel=0.02)


def test_refusals_are_one_line(capsys):
  def refused(argv):
    assert preflight.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert '\n' not in err and err.startswith('error: ')
    return err
  assert 'unknown topology' in refused(['--topology', 'v5p-6', TINY])
  assert 'mesh does not divide' in refused(['--topology', 'v5p-8', TINY, '--gin.MeshConfig.fsdp=3'])
  assert 'MeshConfig.dcn_data=2' in refused(['--topology', '2xv5p-8', TINY])
  assert refused(['--topology', 'v5p-8', TINY, '--gin.TrainerConfig.checkpoint_every=0']) == (
      'error: TrainerConfig.checkpoint_every=0 must be >= 1 (a number of steps)')
  # 262144 x 64 tokens of 2000-way fp32 logits on 4 v5e chips: far over their 16 GiB.
  err = refused(['--topology', 'v5e-4', TINY, '--gin.BATCH_SIZE=262144'])
  assert re.search(r'does not fit: XLA needs [\d.]+ GiB per device, [\d.]+ GiB over the 1[56]\.\d\d GiB '
                   'HBM of TPU v5 lite; try .*remat_policy', err), err


def test_gpu_target_compiles_on_cpu_devices_and_labels_estimates(capsys, monkeypatch):
  # Where jax's CUDA plugin is installed the preflight compiles for the GPUs instead (deviceless).
  monkeypatch.setattr(targets.__name__ + '.cuda_plugin_installed', lambda: False)
  assert preflight.main(['--topology', '8xh100', TINY, '--gin.MeshConfig.fsdp=8',
                         '--gin.MeshConfig.data=1']) == 0
  out = capsys.readouterr().out
  assert "mesh: {'data': 1, 'fsdp': 8, 'tensor': 1} over 8 devices" in out
  assert 'compiled for CPU devices (sharding check only)' in out
  assert 'memory per device (estimated)' in out


def test_a_gpu_run_fits_only_in_the_memory_pool_jax_preallocates(capsys, monkeypatch):
  monkeypatch.setattr(targets.__name__ + '.cuda_plugin_installed', lambda: False)
  monkeypatch.delenv('XLA_CLIENT_MEM_FRACTION', raising=False)
  monkeypatch.delenv('XLA_PYTHON_CLIENT_MEM_FRACTION', raising=False)
  args = ['--topology', '8xh100', TINY, '--gin.MeshConfig.fsdp=8', '--gin.MeshConfig.data=1']
  assert preflight.main(args) == 0
  out = capsys.readouterr().out
  # What CUDA reports of an H100 (81559 MiB), of which JAX takes 75% unless told otherwise.
  assert "of 59.74 GiB (75% of 79.65 GiB: JAX's GPU memory pool)" in out, out
  # The tiny model's fp32 state alone is over 1e-5 of the GPU: refused, naming the pool and the flag.
  assert preflight.main(args + ['--gpu_mem_fraction', '1e-5']) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith('error: does not fit:') and '\n' not in err
  assert "JAX's pool, 0% of its 79.65 GiB" in err and 'XLA_PYTHON_CLIENT_MEM_FRACTION' in err
  # Between 90% and 100% of the pool it goes, with a warning (and --search would not take it).
  r = preflight.preflight(args[2:], '8xh100', print_fn=lambda *a: None)
  tight = 0.75 * r['used'] / 0.95
  assert preflight.main(args + ['--gpu_mem_fraction', str(tight)]) == 0
  assert 'WARNING: 95% of the memory leaves little room' in capsys.readouterr().out
  # The environment the launch exports is what the preflight reads when not told.
  monkeypatch.setenv('XLA_PYTHON_CLIENT_MEM_FRACTION', '0.9')
  assert preflight.main(args) == 0
  assert '(90% of 79.65 GiB' in capsys.readouterr().out
  monkeypatch.setenv('XLA_PYTHON_CLIENT_MEM_FRACTION', '90')
  assert preflight.main(args) == 2
  assert "XLA_PYTHON_CLIENT_MEM_FRACTION='90': expected a fraction in (0, 1]" in capsys.readouterr().err


def test_preflight_of_a_config_naming_seqio_tasks_imports_neither_tensorflow_nor_seqio():
  # It reads no data, so it runs where only jax (+ its CUDA plugin, for GPU targets) is installed.
  code = ('import sys; from launch import preflight; rc = preflight.main(sys.argv[1:]); '
          "print('MODULES', 'tensorflow' in sys.modules, 'seqio' in sys.modules, "
          "'tasks' in sys.modules); sys.exit(rc)")
  out = subprocess.run([sys.executable, '-c', code, '--topology', 'v5p-8', TINY], capture_output=True,
                       text=True, timeout=600, cwd=preflight.train_lib.REPO_ROOT)
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'compiled by XLA for TPU v5p' in out.stdout
  assert 'MODULES False False False' in out.stdout
