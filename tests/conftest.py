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


@pytest.fixture(autouse=True)
def _fresh_gin():
  """gin's bindings are process-global: a test that parses a config (the preflight, the train entry)
  must not leave e.g. MeshConfig.fsdp=8 to the MeshConfig() of a later test in the same process."""
  yield
  gin.clear_config()


@pytest.fixture(autouse=True)
def _no_leftover_compilation_cache():
  """A sweep run in-process points jax's compilation cache at its own directory (for the evaluation
  it runs in-process); later tests in the process must not keep writing there."""
  before = (jax.config.jax_compilation_cache_dir, jax.config.jax_compilation_cache_max_size)
  yield
  if (jax.config.jax_compilation_cache_dir, jax.config.jax_compilation_cache_max_size) != before:
    jax.config.update('jax_compilation_cache_dir', before[0])
    jax.config.update('jax_compilation_cache_max_size', before[1])
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


@pytest.fixture(scope='session')
def prefix_lm_task(small_text, small_vocab):
  from tasks import lm
  return lm.prefix_lm_task(name='test_small_prefix_lm', train_files=[small_text['train']],
                           validation_files=[small_text['validation']], vocabulary=small_vocab)
