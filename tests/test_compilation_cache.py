"""--compilation_cache_dir (t5x_like/compilation_cache.py): a directory it cannot write is a one-line
error before anything compiles; a sweep shares one cache among its runs unless told not to; without a
directory nothing is said of a cache. That a run loads the compiled step from the cache, says so, and
trains bit for bit as the run that compiled it is tested with 2 processes that are preempted and
resumed (test_reliability_processes.py)."""
import collections

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from launch import sweep
from t5x_like import compilation_cache, train

TINY = 'gin_configs/examples/tiny_decoder_pretrain.gin'


def test_an_unwritable_cache_dir_is_one_line_before_anything_runs(tmp_path, capsys):
  not_a_dir = tmp_path / 'file'
  not_a_dir.write_text('')
  before = jax.config.jax_compilation_cache_dir
  code = train.main([f'--gin_file={TINY}', f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
                     '--gin.TRAIN_STEPS=2', f'--compilation_cache_dir={not_a_dir}/cache'])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and err[-1].startswith(f'error: --compilation_cache_dir={not_a_dir}/cache: '
                                          'cannot write a compilation cache there'), err
  assert not (tmp_path / 'run').exists() and jax.config.jax_compilation_cache_dir == before


def test_a_sweep_shares_one_cache_unless_told_not_to(tmp_path):
  base = [str(tmp_path / 'sw'), '--gin_file=gin_configs/experiments/clone_ablation_cpu.gin',
          '--train_steps=5', '--grid', 'p_clone=0.5,0.1']
  for extra, expected in (([], f'--compilation_cache_dir={tmp_path / "sw" / "compilation_cache"}'),
                          (['--compilation_cache_dir=gs://b/c'], '--compilation_cache_dir=gs://b/c'),
                          (['--compilation_cache_dir=none'], None)):
    args = sweep.make_parser().parse_args(base + extra)
    cmds = [r['cmd'] for r in sweep.plan(args, [])]
    assert len(cmds) == 2
    for cmd in cmds:
      flags = [a for a in cmd if a.startswith('--compilation_cache_dir')]
      assert flags == ([expected] if expected else []), cmd


def test_without_a_directory_the_log_says_nothing_of_a_cache():
  jax.config.update('jax_compilation_cache_dir', None)  # (conftest puts the suite's back after)
  jax_cache.reset_cache()
  # jax looks a compile up even without a directory; that is no cache to report.
  with compilation_cache.lookups() as counts:
    jax.jit(lambda x: x * 3 + 1).lower(jax.numpy.ones(3)).compile()
  assert counts['requests'] >= 1 and compilation_cache.describe(counts) == ''
  assert compilation_cache.describe(collections.Counter()) == ''


def test_a_preflight_for_a_tpu_topology_neither_reads_nor_writes_the_cache(tmp_path):
  # jax would store the TPU program and then fail to load it back on the next preflight (no TPU
  # client in this process): a warning per compile, and entries no run can use.
  from launch import preflight
  cache = tmp_path / 'cache'
  compilation_cache.use(str(cache))  # (conftest puts the suite's back after)
  r = preflight.preflight([f'--gin_file={TINY}', '--gin.MeshConfig.data=2', '--gin.MeshConfig.fsdp=2'],
                          'v5p-8', print_fn=lambda *a: None)
  assert r['xla_flops'] > 0
  entries = [p.name for p in cache.iterdir()]
  assert not any('train_step' in e for e in entries), entries
  assert jax.config.jax_enable_compilation_cache  # back on after the preflight


def test_none_turns_the_cache_off_instead_of_naming_a_folder(tmp_path, monkeypatch):
  # launch.sweep took --compilation_cache_dir=none as "no cache"; train and eval took it as a path
  # and made a folder named "none" in the working directory.
  monkeypatch.chdir(tmp_path)
  compilation_cache.use(str(tmp_path / 'cache'))  # (conftest puts the suite's back after)
  assert compilation_cache.current_dir() == str(tmp_path / 'cache')
  compilation_cache.use('None')
  assert compilation_cache.current_dir() is None and not (tmp_path / 'None').exists()
