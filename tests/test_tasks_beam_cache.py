"""seqio's Apache Beam caching (DirectRunner) on one of the project's tasks: the cached examples are the
uncached ones, and the trainer's data path reads the cache through DataConfig.cache_dir."""
import gin
import numpy as np
import seqio

from t5x_like import data
from tasks import beam_cache, interlinear, vocab


def _lines(path, n):
  return path.read_text(encoding='utf-8').splitlines()[:n]


def test_cached_interlinear_task_equals_uncached(shared_data, tmp_path):
  m30k = shared_data / 'parallel' / 'multi30k'
  files = {}
  for split, src, n in (('train', 'train', 300), ('validation', 'val', 60)):
    files[split] = {}
    for lang in ('en', 'de'):
      p = tmp_path / f'{split}.{lang}'
      p.write_text('\n'.join(_lines(m30k / f'{src}.{lang}', n)) + '\n', encoding='utf-8')
      files[split][lang] = str(p)
  voc = vocab.sentencepiece_vocabulary(train_files=[files['train']['en'], files['train']['de']],
                                       vocab_size=400, cache_dir=str(tmp_path / 'spm'))
  task = interlinear.interlinear_task(name='beam_cache_test_interlinear', parallel_files=files,
                                      vocabulary=voc, sequence_length=64, pairs_per_document=4)
  cache_dir = tmp_path / 'cache'
  out = beam_cache.cache_tasks([task.name], str(cache_dir), config_text=gin.config_str())
  assert (tmp_path / 'cache' / out[0].split('/')[-1] / 'COMPLETED').exists()

  seqio.add_global_cache_dirs([str(cache_dir)])
  lengths = {'targets': 64}
  def docs(use_cached):
    ds = task.get_dataset(lengths, split='validation', use_cached=use_cached, shuffle=False)
    return sorted(tuple(ex['targets'].tolist()) for ex in ds.as_numpy_iterator())
  uncached = docs(False)
  assert len(uncached) >= 5
  assert docs(True) == uncached  # Beam reshuffles the order, not the content

  cfg = data.DataConfig(task, lengths, batch_size=8, split='train', use_cached=True,
                        cache_dir=str(cache_dir))
  batch = next(iter(data.get_dataset(cfg, 'decoder')))
  assert batch['decoder_target_tokens'].shape == (8, 64)
  assert np.asarray(batch['decoder_loss_weights']).sum() > 0

  # Beam's cache -> an export (the TF-free path's input): the same first batches.
  from tasks import export
  export.export_split(cfg, 'decoder', str(tmp_path / 'export'), num_examples=16)
  it = data.open_iterator(data.DataConfig(None, lengths, batch_size=8, export_dir=str(
      tmp_path / 'export')), 'decoder', None)
  for theirs in data.get_dataset(cfg, 'decoder').take(2).as_numpy_iterator():
    mine = next(it)
    for k in theirs:
      np.testing.assert_array_equal(mine[k], theirs[k])


def test_register_from_gin_returns_data_configs_and_errors_apart():
  """`tasks cache` without --tasks caches the tasks of every configured DataConfig: the values must be
  DataConfigs (a list of errors among them once broke it)."""
  import gin
  from tasks.__main__ import register_from_gin
  try:
    configs, errors = register_from_gin(['gin_configs/examples/tiny_decoder_pretrain.gin'], [])
  finally:
    gin.clear_config()
  assert set(configs) == {'train', 'eval'} and errors == []
  assert all(isinstance(c.name, str) and c.name for c in configs.values())
