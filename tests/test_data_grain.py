"""The export path (tasks/export.py -> t5x_like/data_grain.py): the export reads back as exactly the
seqio batches, training from it resumes bit-exactly, resumes on another number of processes with
the same global batches, runs without TensorFlow, and refuses bad input in one line."""
import dataclasses
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import EXPORT_BATCH, EXPORT_LENGTHS
from t5x_like import checkpointing, data, data_grain, losses, optimizers, partitioning, trainer
from t5x_like.models import DecoderConfig, EncDecConfig

REPO = pathlib.Path(__file__).resolve().parents[1]
MODEL = DecoderConfig(vocab_size=500, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      head_dim=8, mlp_dim=64, dtype='float32')
LENGTHS, BATCH = EXPORT_LENGTHS, EXPORT_BATCH  # (the export's: conftest.py's export_dir)


def _cfg(export_dir, **kw):
  return data.DataConfig(None, kw.pop('lengths', LENGTHS), batch_size=kw.pop('batch_size', BATCH), seed=3,
                         export_dir=export_dir, **kw)


def test_export_reads_back_as_exactly_the_seqio_batches(lm_task, export_dir):
  seqio_batches = data.get_dataset(data.DataConfig(lm_task, LENGTHS, batch_size=BATCH, seed=3),
                                   'decoder').as_numpy_iterator()
  it = data.open_iterator(_cfg(export_dir), 'decoder', None)
  meta = json.loads((pathlib.Path(export_dir) / 'train' / 'meta.json').read_text())
  assert meta['num_examples'] == 20 * BATCH and len(meta['shards']) == 4
  assert it.abstract_batch(BATCH)['decoder_target_tokens'].shape == (BATCH, 32)
  for b in range(20):
    mine, theirs = next(it), next(seqio_batches)
    assert sorted(mine) == sorted(theirs)
    for k in theirs:
      np.testing.assert_array_equal(mine[k], theirs[k], err_msg=f'batch {b} {k}')
  with pytest.raises(StopIteration):
    next(it)
  # The eval split: the whole split once, in order, whole batches only.
  evals = list(data.open_iterator(_cfg(export_dir, split='validation', shuffle=False,
                                       num_epochs=1), 'decoder', None).local_batches())
  n_valid = json.loads((pathlib.Path(export_dir) / 'validation' / 'meta.json').read_text())[
      'num_examples']
  assert len(evals) == n_valid // BATCH


def test_epoch_export_is_shuffled_by_seed_per_epoch(export_dir, tmp_path):
  # The validation export is 'epoch' mode: read with shuffle, each epoch is a new permutation of
  # the same whole batches' worth of examples.
  cfg = _cfg(export_dir, split='validation', shuffle=True, num_epochs=2)
  rows = lambda c: np.concatenate([b['decoder_target_tokens'] for b in
                                   data.open_iterator(c, 'decoder', None).local_batches()])
  a, b = rows(cfg), rows(cfg)
  np.testing.assert_array_equal(a, b)  # deterministic
  half = len(a) // 2
  assert not np.array_equal(a[:half], a[half:])
  key = lambda x: sorted(map(bytes, x))
  assert key(a[:half]) == key(a[half:])
  assert not np.array_equal(rows(dataclasses.replace(cfg, seed=4)), a)


def _fit(model_dir, steps, export_dir, *, model=MODEL, **data_kw):
  return trainer.fit(
      model_dir=str(model_dir), train_steps=steps, model_config=model,
      train_data=_cfg(export_dir, **data_kw),
      eval_data=_cfg(export_dir, split='validation', shuffle=False, num_epochs=1),
      optimizer_config=optimizers.OptimizerConfig(learning_rate=3e-3, warmup_steps=2,
                                                  decay_steps=40),
      loss_config=losses.LossConfig(), mesh_config=partitioning.MeshConfig(data=2, fsdp=2, tensor=2),
      trainer_config=trainer.TrainerConfig(log_every=1, checkpoint_every=5, eval_steps=2),
      log=lambda *a, **k: None)


def test_skipping_batches_of_an_export_seeks_past_them_as_reading_would(export_dir):
  # (TrainerConfig.skip_data; the seqio path reads and drops, tests/test_reliability.py)
  read = list(data.open_iterator(_cfg(export_dir), 'decoder', None).local_batches())
  it = data.open_iterator(_cfg(export_dir), 'decoder', None)
  it.next_local()
  it.skip(3)
  for k, v in it.next_local().items():
    np.testing.assert_array_equal(v, read[4][k])
  with pytest.raises(ValueError, match='the data ended after 15 of the 16 batches to skip'):
    it.skip(16)


def test_resume_from_an_export_is_exact_and_a_different_export_is_refused(export_dir, tmp_path):
  straight = dict(_fit(tmp_path / 'a', 12, export_dir)['history'])
  first = dict(_fit(tmp_path / 'b', 7, export_dir)['history'])
  resumed = dict(_fit(tmp_path / 'b', 12, export_dir)['history'])
  assert sorted(resumed) == list(range(8, 13))
  for s in range(1, 8):
    assert first[s] == straight[s]
  for s in range(8, 13):
    assert resumed[s] == straight[s], (s, resumed[s], straight[s])
  state = json.loads((tmp_path / 'b' / 'checkpoints' / '12' / 'data' / 'metadata').read_text())
  assert state['next_batch'] == 12
  assert (tmp_path / 'b' / 'vocabulary' / 'spm.model').read_bytes() == (
      pathlib.Path(export_dir) / 'vocabulary' / 'spm.model').read_bytes()

  other = tmp_path / 'other'
  shutil.copytree(export_dir, other)
  meta_path = other / 'train' / 'meta.json'
  meta = json.loads(meta_path.read_text())
  meta['content_sha256'] = '0' * 64  # stands for an export of other data
  meta_path.write_text(json.dumps(meta))
  ckdir = tmp_path / 'b' / 'checkpoints'
  before = sorted(str(p.relative_to(ckdir)) for p in ckdir.rglob('*'))
  # A whole checkpoint that this run differs from: a mismatch, not "damaged, resume from an earlier
  # step" (which every earlier step would repeat).
  with pytest.raises(checkpointing.CheckpointMismatch,
                     match=r'does not match this run: it was written reading export .*, this run '
                           r'reads .*; resume with the data settings it was saved with, or set '
                           r'TrainerConfig.restore_data=False'):
    _fit(tmp_path / 'b', 15, str(other))
  with pytest.raises(checkpointing.CheckpointMismatch,
                     match=r'data position was saved with global batch 8, this run has 4; resume '
                           r'with the data settings it was saved with'):
    _fit(tmp_path / 'b', 15, export_dir, batch_size=4)
  assert sorted(str(p.relative_to(ckdir)) for p in ckdir.rglob('*')) == before


@pytest.mark.parametrize('change, message', [
    (dict(lengths={'targets': 64}), r"exported with feature lengths \{'targets': 32\}, "
                                     r"DataConfig.task_feature_lengths is \{'targets': 64\}"),
    (dict(pack=False), 'exported with pack=True, DataConfig.pack=False'),
    (dict(model=dataclasses.replace(MODEL, vocab_size=300)),
     "the export's vocabulary has 500 ids, the model's vocab_size is 300"),
    (dict(model=EncDecConfig(vocab_size=500, embed_dim=32, num_encoder_layers=1,
                             num_decoder_layers=1, num_heads=4, head_dim=8, mlp_dim=64)),
     'exported for a decoder model .* this model is encdec'),
    (dict(steps=30), r'160 examples make 20 batches of 8, the run needs 30'),
])
def test_an_export_that_does_not_match_the_config_fails_before_anything_is_built(
    export_dir, tmp_path, change, message):
  change = dict(change)
  steps = change.pop('steps', 5)
  with pytest.raises(ValueError, match=message) as e:
    _fit(tmp_path / 'run', steps, export_dir, **change)
  assert '\n' not in str(e.value)
  assert not (tmp_path / 'run' / 'checkpoints').exists()


def test_a_truncated_shard_is_named(export_dir, tmp_path):
  bad = tmp_path / 'bad'
  shutil.copytree(export_dir, bad)
  shard = bad / 'train' / 'data-00001-of-00004.array_record'
  shard.write_bytes(shard.read_bytes()[:-100])
  with pytest.raises(ValueError, match=f'export shard {re.escape(str(shard))} is truncated'):
    data.open_iterator(_cfg(str(bad)), 'decoder', None)
  (bad / 'validation' / 'meta.json').unlink()
  with pytest.raises(FileNotFoundError, match='validation/meta.json not found'):
    data.open_iterator(_cfg(str(bad), split='validation'), 'decoder', None)


def _tiny_args(export_dir, model_dir, steps, hashes):
  return ['--gin_file=gin_configs/examples/tiny_decoder_from_export.gin',
          f"--gin.EXPORT_DIR='{export_dir}'", f"--gin.MODEL_DIR='{model_dir}'",
          f'--gin.TRAIN_STEPS={steps}', '--gin.VOCAB_SIZE=500', '--gin.SEQUENCE_LENGTH=32',
          f'--gin.BATCH_SIZE={BATCH}', '--gin.TrainerConfig.log_every=1',
          '--gin.TrainerConfig.checkpoint_every=4', '--gin.TrainerConfig.eval_steps=2',
          f"--gin.train/DataConfig.batch_hash_dir='{hashes}'"]


def test_training_from_an_export_imports_neither_tensorflow_nor_seqio(export_dir, tmp_path):
  # The tools that read a run back (evaluation, decoding, the HF converters) import neither either.
  code = ('import sys; from t5x_like import train; rc = train.main(sys.argv[1:]); '
          'import t5x_like.eval, t5x_like.decoding, t5x_like.convert.__main__; '
          'import os; from t5x_like import run_dir; run_dir.load_vocabulary(os.environ["RUN"]); '
          "print('MODULES', 'tensorflow' in sys.modules, 'seqio' in sys.modules, "
          "'tasks' in sys.modules); sys.exit(rc)")
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2',
             RUN=str(tmp_path / 'run'))
  out = subprocess.run([sys.executable, '-c', code,
                        *_tiny_args(export_dir, tmp_path / 'run', 6, tmp_path / 'h')],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'step 6/6' in out.stdout and 'eval test_small_lm @ step 6' in out.stdout
  assert 'MODULES False False False' in out.stdout
  assert list((tmp_path / 'run' / 'train').glob('events.out.tfevents.*'))
  assert (tmp_path / 'run' / 'checkpoints' / '6' / 'state').is_dir()
  assert (tmp_path / 'run' / 'vocabulary' / 'spm.model').exists()


def _global_batches(hash_dir) -> dict:
  """{batch: [row hashes in global order]} from every host's log; a row fed twice is an error."""
  rows = {}
  for f in pathlib.Path(hash_dir).glob('host*.jsonl'):
    for line in f.read_text().splitlines():
      r = json.loads(line)
      for i, h in enumerate(r['rows']):
        key = (r['batch'], r['first_row'] + i)
        assert key not in rows, f'global batch {key[0]} row {key[1]} fed twice'
        rows[key] = h
  out = {}
  for (b, i), h in sorted(rows.items()):
    out.setdefault(b, []).append(h)
  return out


def _losses(output: str) -> dict:
  return {int(m.group(1)): float(m.group(2))
          for m in re.finditer(r'^step +(\d+)/\d+ \| loss ([0-9.]+)', output, re.M)}


def test_elastic_resume_two_to_one_and_one_to_two_processes(export_dir, tmp_path, monkeypatch):
  from launch import local
  monkeypatch.chdir(REPO)

  def run(name, steps, processes):
    args = _tiny_args(export_dir, tmp_path / name, steps, tmp_path / f'{name}_h')
    outs = local.launch(args + ['--gin.train.eval_data=None'],  # no eval step to compile
                        num_processes=processes, devices_per_process=8 // processes, stream=None,
                        timeout=600, log_dir=str(tmp_path))
    return _losses(outs[0])

  straight = run('straight', 8, 1)  # checkpoints at 4 and 8
  expected = _global_batches(tmp_path / 'straight_h')
  assert sorted(expected) == list(range(8)) and all(len(v) == BATCH for v in expected.values())
  # 1 -> 2: the uninterrupted run's checkpoint at step 4, resumed by two processes.
  shutil.copytree(tmp_path / 'straight', tmp_path / 'one_to_two')
  shutil.rmtree(tmp_path / 'one_to_two' / 'checkpoints' / '8')
  os.makedirs(tmp_path / 'one_to_two_h')
  with open(tmp_path / 'one_to_two_h' / 'host0of1.jsonl', 'w') as f:
    f.writelines(l + '\n' for l in (tmp_path / 'straight_h' / 'host0of1.jsonl').read_text()
                 .splitlines() if json.loads(l)['batch'] < 4)
  resumed = {'one_to_two': {**{s: straight[s] for s in range(1, 5)}, **run('one_to_two', 8, 2)}}
  # 2 -> 1.
  first = run('two_to_one', 4, 2)
  resumed['two_to_one'] = {**first, **run('two_to_one', 8, 1)}
  for name, seen in resumed.items():
    assert _global_batches(tmp_path / f'{name}_h') == expected, name
    assert sorted(seen) == list(range(1, 9))
    for s in range(1, 9):  # the same global batches on an 8-device mesh either way
      assert seen[s] == pytest.approx(straight[s], abs=2e-4), (name, s, seen[s], straight[s])


def test_an_experiment_file_pointed_at_an_export_is_parsed_without_the_tasks_package(export_dir):
  # What launch.sweep --export does: the experiment's own gin file, its data overridden.
  code = '''
import sys
import gin
from t5x_like import data, train
skipped = train.parse_gin_importing_tasks_if_named(
    ['gin_configs/experiments/clone_ablation_cpu.gin'],
    ["MODEL_DIR = '/tmp/unused'", 'TRAIN_STEPS = 5', 'P_CLONE = 0.1',
     'DataConfig.mixture_or_task = None', f'DataConfig.export_dir = {sys.argv[1]!r}'], [])
with gin.config_scope('train'):
  cfg = data.DataConfig()
print(sorted(skipped), cfg.export_dir == sys.argv[1], cfg.pack, 'tasks' in sys.modules,
      'tensorflow' in sys.modules)
'''
  out = subprocess.run([sys.executable, '-c', code, export_dir], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split('\n')[-2] == (
      "['sentencepiece_vocabulary', 'tasks.cloned.cloned_lm_task'] True False False False")
  # A misspelt macro is still caught although the task bindings that use the others are skipped.
  bad = code.replace("'P_CLONE = 0.1'", "'P_CLONNE = 0.1'")
  out = subprocess.run([sys.executable, '-c', bad, export_dir], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
  assert 'gin macro P_CLONNE is set on the command line but no gin file uses' in out.stderr


def test_export_command_writes_train_and_eval_and_never_overwrites(small_text, tmp_path, capsys,
                                                                    monkeypatch):
  from tasks import __main__ as tasks_main
  monkeypatch.chdir(REPO)
  argv = ['export', '--gin_file=gin_configs/examples/tiny_decoder_pretrain.gin',
          "--gin.MODEL_DIR='/tmp/unused'", '--gin.TRAIN_STEPS=3', '--gin.BATCH_SIZE=4',
          f"--gin.TRAIN_FILES=['{small_text['train']}']",
          f"--gin.VALIDATION_FILES=['{small_text['validation']}']", '--output', str(tmp_path / 'x')]
  assert tasks_main.main(argv) == 0
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert out['splits']['train']['num_examples'] == 12  # TRAIN_STEPS x BATCH_SIZE
  assert out['splits']['train']['mode'] == 'stream' and out['splits']['eval']['mode'] == 'epoch'
  meta = data_grain.read_meta(str(tmp_path / 'x' / 'validation'))
  assert meta['family'] == 'decoder' and meta['task_feature_lengths'] == {'targets': 64}
  assert tasks_main.main(argv) == 2
  assert 'already holds an export' in capsys.readouterr().err
  other = argv[:-1] + [str(tmp_path / 'y')]
  for extra, err in ((['--steps', '0'], 'error: --steps 0: expected at least 1'),
                     (['--scopes', 'trian'], 'error: --scopes trian: not configured by the gin file '
                                             '(it configures: eval, train)')):
    assert tasks_main.main(other + extra) == 2
    assert capsys.readouterr().err.strip() == err
  assert not (tmp_path / 'y').exists()
