"""The whole loop on tiny runs: launch.sweep trains a 2-run grid (a 50/50 run and its monolingual
baseline) through `python -m t5x_like.train`, evaluates every checkpoint, writes the report; the
report's numbers are the eval JSON's, and a second invocation skips the finished runs."""
import json
import os
import pathlib
import re

import pytest

from launch import sweep
from t5x_like import provenance
from t5x_like.evaluation import results as results_lib

STEPS = 20


@pytest.fixture(scope='module')
def tiny_sweep(small_text, tmp_path_factory):
  out = str(tmp_path_factory.mktemp('sweep'))
  spm_cache = str(tmp_path_factory.mktemp('spm'))
  args = [
      out, '--gin_file=gin_configs/experiments/clone_ablation_cpu.gin', f'--train_steps={STEPS}',
      '--grid', 'p_clone=0.5', '--add', 'p_clone=0.0', '--eval', '--report', '--jobs=2',
      '--eval_flags=--max_windows 32 --align_windows 16 --grad_batches 2 --batch_size 8 '
      f'--mexa_n 24 --mexa_pivot {small_text["validation"]}',
      f"--gin.TRAIN_FILES=['{small_text['train']}']",
      f"--gin.VALIDATION_FILES=['{small_text['validation']}']",
      '--gin.VOCAB_SIZE=300', '--gin.MODEL_VOCAB_SIZE=600', '--gin.SEQUENCE_LENGTH=32',
      '--gin.BATCH_SIZE=8', '--gin.NUM_LAYERS=2', '--gin.EMBED_DIM=32', '--gin.NUM_HEADS=2',
      '--gin.MLP_DIM=64', '--gin.TrainerConfig.checkpoint_every=5',
      '--gin.OptimizerConfig.warmup_steps=2', '--gin.TrainerConfig.log_every=5',
      f"--gin.sentencepiece_vocabulary.cache_dir='{spm_cache}'",
  ]
  # Training subprocesses: one CPU device is all a tiny run needs (compiles faster than 8).
  old = os.environ.get('XLA_FLAGS')
  os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=1'
  try:
    rc = sweep.main(args)
  finally:
    if old is None:
      os.environ.pop('XLA_FLAGS')
    else:
      os.environ['XLA_FLAGS'] = old
  return {'dir': out, 'args': args, 'rc': rc}


def test_runs_train_to_the_end_and_are_evaluated_at_every_checkpoint(tiny_sweep):
  assert tiny_sweep['rc'] == 0
  for name in ('p0.5', 'p0.0'):
    d = os.path.join(tiny_sweep['dir'], name)
    steps = sweep.checkpoint_steps(d)
    assert steps[-1] == STEPS and len(steps) >= 4
    results = results_lib.read_results(d)
    assert sorted(results) == steps  # perplexity over steps: every checkpoint
    final = results[STEPS]
    for key in ('perplexity', 'alignment', 'gradient_alignment', 'mexa', 'init_control',
                'token_efficiency', 'tokens_seen'):
      assert key in final, (name, key)
    assert len(final['alignment']['lang1']['layers']) == 3  # embedding + 2 blocks
    assert final['source_commit'] == provenance.source_commit()  # which code evaluated it
    assert list((__import__('pathlib').Path(d) / 'eval' / 'suite').glob('events.out.tfevents.*'))
  p5 = results_lib.read_results(os.path.join(tiny_sweep['dir'], 'p0.5'))[STEPS]
  mono = results_lib.read_results(os.path.join(tiny_sweep['dir'], 'p0.0'))[STEPS]
  assert p5['tokens_seen']['lang1'] == pytest.approx(0.5 * STEPS * 8 * 32)
  # The monolingual run never trained on the clone: the clone stays near uniform (vocab 600) or worse,
  # while the 50/50 run learns both languages alike.
  assert mono['perplexity']['lang1']['perplexity'] > 3 * mono['perplexity']['lang0']['perplexity']
  ratio = p5['perplexity']['lang1']['perplexity'] / p5['perplexity']['lang0']['perplexity']
  assert 0.7 < ratio < 1.4


def test_report_numbers_equal_the_eval_json(tiny_sweep):
  text = pathlib.Path(tiny_sweep['dir'], 'report.md').read_text()
  lines = text.splitlines()
  i = next(i for i, l in enumerate(lines) if l.startswith('| run |'))
  head = [c.strip() for c in lines[i].strip('|').split('|')]
  rows = {}
  for l in lines[i + 2:i + 4]:
    row = dict(zip(head, [c.strip() for c in l.strip('|').split('|')]))
    rows[row['run']] = row
  for name, row in rows.items():
    final = results_lib.read_results(os.path.join(tiny_sweep['dir'], name))[STEPS]
    assert int(row['step']) == STEPS
    for lang in ('lang0', 'lang1'):
      assert float(row[f'ppl_{lang}']) == round(final['perplexity'][lang]['perplexity'], 3)
    gap = final['alignment']['lang1']['centred_gap']
    assert float(row['align_gap_mean']) == round(sum(gap) / len(gap), 4)
    assert float(row['grad_cos']) == round(final['gradient_alignment']['lang1']['non_vocab'], 4)
    mexa = next(iter(final['mexa']['targets'].values()))['weighted']
    assert float(row['mexa_mean']) == round(mexa['mean'], 3)
    teff = final['token_efficiency']['languages']['lang0']['teff']
    assert float(row['teff_lang0']) == round(teff, 3)
  exact = json.loads(pathlib.Path(tiny_sweep['dir'], 'report.json').read_text())['runs']
  assert exact['p0.5']['ppl_lang0'] == results_lib.read_results(
      os.path.join(tiny_sweep['dir'], 'p0.5'))[STEPS]['perplexity']['lang0']['perplexity']
  for png in ('ppl_over_steps.png', 'alignment_by_layer.png', 'mexa_by_layer.png'):
    assert os.path.getsize(os.path.join(tiny_sweep['dir'], png)) > 10_000
  # 20 steps of a 32-wide model: nothing aligns, and the report says so rather than over-reading it.
  assert re.search(r'\*\*50/50\*\*: .*hidden-state alignment at chance', text)


def test_rerun_skips_finished_runs(tiny_sweep, capsys):
  logs = {n: pathlib.Path(tiny_sweep['dir'], n, 'train.log').read_text() for n in ('p0.5', 'p0.0')}
  args = [a for a in tiny_sweep['args'] if a not in ('--eval', '--report')]
  assert sweep.main(args) == 0
  out = capsys.readouterr().out
  assert '[sweep] p0.5: finished' in out and '[sweep] p0.0: finished' in out
  assert 'training' not in out
  for n, before in logs.items():
    assert pathlib.Path(tiny_sweep['dir'], n, 'train.log').read_text() == before
