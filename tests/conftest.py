"""Tests run on CPU with 8 fake devices; must be set before jax is first imported."""
import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('HF_HUB_OFFLINE', '1')

import pathlib  # noqa: E402

import gin  # noqa: E402
import jax  # noqa: E402
import pytest  # noqa: E402
from jax.experimental.compilation_cache import compilation_cache as jax_cache  # noqa: E402

from t5x_like import compilation_cache, data  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / 'shared' / 'data'


def steps_on_disk(model_dir) -> list:
  """The committed checkpoint steps of a run (Orbax's temporary folders excluded)."""
  ck = pathlib.Path(model_dir) / 'checkpoints'
  return sorted(int(p.name) for p in ck.iterdir() if p.name.isdigit())


def tb_losses(model_dir) -> dict:
  """{step: loss} from a run's TensorBoard training events."""
  return tb_losses_of((pathlib.Path(model_dir) / 'train').glob('events.out.tfevents.*'))


def tb_losses_of(event_files) -> dict:
  # Imported here: TensorBoard's reader loads TensorFlow when it is installed.
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.util import tensor_util
  out = {}
  for f in sorted(event_files):
    ea = event_accumulator.EventAccumulator(str(f), size_guidance={'tensors': 0})
    ea.Reload()
    for e in ea.Tensors('loss'):
      out[e.step] = float(tensor_util.make_ndarray(e.tensor_proto))
  return out


# The files that take longest (`pytest --durations=0` on the 2-core development VM, 2026-12-07: 440,
# 200, 170, 160, 150, 145, 115 and 110 s of the suite's 2090), run first. scripts/test.sh runs two
# workers that take whole files (`--dist loadfile`) in collection order (`--no-loadscope-reorder`;
# xdist would otherwise start the files with the most tests first): a long file started last keeps
# one worker busy while the other has nothing left. (Only the order changes, never what runs.)
LONGEST_FIRST = ('test_reliability_processes.py', 'test_gpu_suite.py', 'test_reliability.py',
                 'test_train_entry.py', 'test_slurm.py', 'test_models.py', 'test_data_grain.py',
                 'test_convert_fidelity.py')


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # (stable: the rest keep their order)


@pytest.fixture(autouse=True)
def _fresh_gin():
  """gin's bindings are process-global: a test that parses a config (the preflight, the train entry)
  must not leave e.g. MeshConfig.fsdp=8 to the MeshConfig() of a later test in the same process."""
  yield
  gin.clear_config()


_CACHE_SETTINGS = ('jax_compilation_cache_dir', 'jax_compilation_cache_max_size',
                   'jax_persistent_cache_min_compile_time_secs')
_suite_cache: dict = {}


@pytest.fixture(scope='session', autouse=True)
def _suite_compilation_cache(tmp_path_factory):
  """One persistent compilation cache per test process (t5x_like/compilation_cache.py, as a sweep
  uses it): the tests compile the same tiny steps again and again (every fit jits anew), and load
  them from it instead (test_reliability.py alone: 130 s without, 85 s with). Every program is kept:
  here a compile takes less than jax's 1 s default threshold.

  The entry points that tests start as subprocesses (`python -m t5x_like.train`, launch.local) use it
  too, through jax's own environment variables, as a user's JAX_COMPILATION_CACHE_DIR would: each
  run's first save compiled Orbax's ~70 slices of the replicated arrays anew (4-8 s of every run that
  saves), and the same tiny configs' steps again in every test. (A test that passes
  --compilation_cache_dir, or a sweep with its own, uses that one; process 1 of two never loads: on
  CPU its cache key differs from process 0's.)"""
  directory = str(tmp_path_factory.mktemp('jax_cache'))
  compilation_cache.use(directory)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  _suite_cache.update({k: getattr(jax.config, k) for k in _CACHE_SETTINGS})
  os.environ['JAX_COMPILATION_CACHE_DIR'] = directory
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  # (A bound turns on jax's file lock: the two processes of a launch.local job share it.)
  os.environ['JAX_COMPILATION_CACHE_MAX_SIZE'] = str(jax.config.jax_compilation_cache_max_size)
  yield


@pytest.fixture(autouse=True)
def _no_leftover_compilation_cache(_suite_compilation_cache):
  """A sweep run in-process points jax's compilation cache at its own directory (for the evaluation
  it runs in-process, also from a module-scoped fixture); after each test the process goes back to
  the suite's cache, so later tests do not keep writing there."""
  yield
  if any(getattr(jax.config, k) != v for k, v in _suite_cache.items()):
    for k, v in _suite_cache.items():
      jax.config.update(k, v)
    jax_cache.reset_cache()


@pytest.fixture(scope='session')
def shared_data() -> pathlib.Path:
  assert SHARED_DATA.is_dir(), f'{SHARED_DATA} is missing: tests read real data from ../shared/data'
  return SHARED_DATA


@pytest.fixture(scope='session')
def small_text(shared_data, tmp_path_factory) -> dict:
  """The first 4000 Multi30k English captions (train) and 200 (validation), as text-line files."""
  d = tmp_path_factory.mktemp('text')
  out = {}
  for split, src, n in (('train', 'train.en', 4000), ('validation', 'val.en', 200)):
    lines = (shared_data / 'parallel' / 'multi30k' / src).read_text(encoding='utf-8').splitlines()[:n]
    path = d / f'{split}.txt'
    path.write_text('\n'.join(lines) + '\n', encoding='utf-8')
    out[split] = str(path)
  return out


@pytest.fixture(scope='session')
def small_vocab(small_text, tmp_path_factory):
  from tasks import vocab
  return vocab.sentencepiece_vocabulary(train_files=[small_text['train']], vocab_size=500,
                                        cache_dir=str(tmp_path_factory.mktemp('spm')))


@pytest.fixture(scope='session')
def lm_task(small_text, small_vocab):
  from tasks import lm
  return lm.text_lm_task(name='test_small_lm', train_files=[small_text['train']],
                         validation_files=[small_text['validation']], vocabulary=small_vocab)


EXPORT_LENGTHS = {'targets': 32}
EXPORT_BATCH = 8


def _export(lm_task, out: str, num_batches: int) -> str:
  from tasks import export
  train = data.DataConfig(lm_task, EXPORT_LENGTHS, batch_size=EXPORT_BATCH, seed=3)
  valid = data.DataConfig(lm_task, EXPORT_LENGTHS, batch_size=EXPORT_BATCH, split='validation',
                          shuffle=False, num_epochs=1)
  export.export_split(train, 'decoder', out, num_examples=num_batches * EXPORT_BATCH,
                      examples_per_shard=50)
  export.export_split(valid, 'decoder', out)
  return out


@pytest.fixture(scope='session')
def export_dir(lm_task, tmp_path_factory) -> str:
  """lm_task exported for the TF-free input path (tasks/export.py): 20 training batches of 8 x 32
  (seed 3, in 4 shards) and the validation split whole."""
  return _export(lm_task, str(tmp_path_factory.mktemp('export') / 'lm'), 20)


@pytest.fixture(scope='session')
def long_export(lm_task, tmp_path_factory) -> str:
  """The same, 200 training batches: for runs that are stopped part way. A run that reads an export
  imports neither TensorFlow nor seqio: ~9 s less start-up per process."""
  return _export(lm_task, str(tmp_path_factory.mktemp('long_export') / 'lm'), 200)


@pytest.fixture(scope='session')
def prefix_lm_task(small_text, small_vocab):
  from tasks import lm
  return lm.prefix_lm_task(name='test_small_prefix_lm', train_files=[small_text['train']],
                           validation_files=[small_text['validation']], vocabulary=small_vocab)
