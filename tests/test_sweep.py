"""launch/sweep.py: grid expansion, run names, finished/resume detection, a failed run's report (no
training here; the end-to-end sweep -> eval -> report test is tests/test_sweep_e2e.py)."""
import json
import os
import re
import sys

from conftest import REPO
from launch import sweep
from t5x_like import writer_lock


def test_grid_product_and_extra_runs():
  grid = sweep.parse_assignments('p_clone=0.5,0.1', multi=True)
  grid.update(sweep.parse_assignments('seed=0,1', multi=True))
  runs = sweep.expand(grid, [sweep.parse_assignments('p_clone=0.0', multi=False)])
  names = [sweep.run_name(r) for r in runs]
  assert names == ['p0.5-seed0', 'p0.5-seed1', 'p0.1-seed0', 'p0.1-seed1', 'p0.0-seed0']
  assert sweep.setting_name(runs[1]) == 'p0.5'


def test_schedule_replaces_p_clone_and_duplicates_collapse():
  grid = {'P_CLONE': [0.5, 0.1], 'SCHEDULE': [None, '0.1_0.9']}
  names = [sweep.run_name(r) for r in sweep.expand(grid)]
  assert names == ['p0.5', 'sched0.1_0.9', 'p0.1']


def test_values_become_gin_literals():
  assert sweep.parse_assignments('schedule=none,0.1_0.9', multi=True) == {
      'SCHEDULE': [None, '0.1_0.9']}
  assert [sweep.gin_literal(v) for v in (None, 0.1, 3, '0.1_0.9')] == ['None', '0.1', '3',
                                                                       "'0.1_0.9'"]
  cmd = sweep.train_command('/tmp/x', ['a.gin'], {'P_CLONE': 0.1, 'SCHEDULE': None}, 20,
                            ['--gin.BATCH_SIZE=8'])
  assert cmd[-4:] == ['--gin.TRAIN_STEPS=20', '--gin.BATCH_SIZE=8', '--gin.P_CLONE=0.1',
                      '--gin.SCHEDULE=None']


def test_finished_means_final_checkpoint_at_train_steps(tmp_path):
  d = str(tmp_path / 'run')
  assert not sweep.is_finished(d, 20)
  os.makedirs(os.path.join(d, 'checkpoints', '10'))
  # An in-progress orbax save has a temporary name: not a finished step.
  os.makedirs(os.path.join(d, 'checkpoints', '20.orbax-checkpoint-tmp-1'))
  assert sweep.checkpoint_steps(d) == [10]
  assert not sweep.is_finished(d, 20)
  os.makedirs(os.path.join(d, 'checkpoints', '20'))
  assert sweep.is_finished(d, 20)


def test_dry_run_lists_state_and_grid_file(tmp_path, capsys):
  spec = tmp_path / 'grid.json'
  spec.write_text(json.dumps({'grid': {'p_clone': [0.5, 0.1]}, 'add': [{'p_clone': 0.0}]}))
  os.makedirs(tmp_path / 'sw' / 'p0.1' / 'checkpoints' / '7')
  gin_file = '--gin_file=gin_configs/experiments/clone_ablation_cpu.gin'
  rc = sweep.main([str(tmp_path / 'sw'), gin_file, '--train_steps=20', f'--grid_file={spec}',
                   '--dry_run'])
  out = capsys.readouterr().out
  assert rc == 0
  assert '[sweep] p0.5: new' in out and '[sweep] p0.1: resume from step 7' in out
  assert '[sweep] p0.0: new' in out
  assert not (tmp_path / 'sw' / 'p0.5').exists()  # a dry run writes nothing
  # The dry run parses every run's config as the sweep would: a misspelt key or gin file is refused.
  for argv, err in (
      ([gin_file, '--grid', 'P_CLONNE=0.1,0.5'],
       'error: gin macro P_CLONNE is set on the command line but no gin file uses %P_CLONNE '
       '(misspelt?)'),
      (['--gin_file=gin_configs/experiments/clone_ablation.gin', '--grid', 'p_clone=0.1'],
       'error: gin file not found: gin_configs/experiments/clone_ablation.gin')):
    assert sweep.main([str(tmp_path / 'new'), '--train_steps=20', *argv, '--dry_run']) == 2
    assert capsys.readouterr().err.strip() == err
  assert not (tmp_path / 'new').exists()


def test_core_slots_split_the_cores():
  slots = sweep._core_slots(2)
  if len(os.sched_getaffinity(0)) >= 2:
    assert len(slots) == 2 and not (slots[0] & slots[1])
  assert sweep._core_slots(1) == [None]


def test_export_option_points_every_run_at_its_own_export(tmp_path):
  args = sweep.make_parser().parse_args([str(tmp_path), '--gin_file=a.gin', '--train_steps=20',
                                         '--grid', 'p_clone=0.5,0.1', '--export'])
  runs = sweep.plan(args, ['--gin.BATCH_SIZE=8'])
  for r in runs:
    assert r['export_dir'] == str(tmp_path / 'exports' / r['name'])
    assert '--gin.DataConfig.mixture_or_task=None' in r['cmd']
    assert f"--gin.DataConfig.export_dir='{r['export_dir']}'" in r['cmd']
  assert runs[0]['export_dir'] != runs[1]['export_dir']


def test_a_run_from_an_export_reads_it_in_every_scope_of_the_experiment_file(tmp_path):
  # cloned_captions.gin names its train and eval tasks in the train/ and eval/ scopes, which an
  # unscoped DataConfig.mixture_or_task=None does not override: every `sweep --export` run of it
  # failed after the export ("No configurable matching reference '@tasks.cloned.cloned_lm_task()'").
  import gin
  from t5x_like import train
  args = sweep.make_parser().parse_args([str(tmp_path), '--train_steps=20', '--grid', 'p_clone=0.5',
                                         '--gin_file=gin_configs/experiments/cloned_captions.gin',
                                         '--export'])
  cmd = sweep.plan(args, [])[0]['cmd']
  bindings = [a[len('--gin.'):].replace('=', ' = ', 1) for a in cmd if a.startswith('--gin.')]
  gin.clear_config()
  try:
    train.parse_gin_importing_tasks_if_named(['gin_configs/experiments/cloned_captions.gin'],
                                             bindings, [])
    for scope in ('train/', 'eval/'):
      assert gin.query_parameter(f'{scope}DataConfig.mixture_or_task') is None, scope
    assert gin.query_parameter('DataConfig.export_dir') == str(tmp_path / 'exports' / 'p0.5')
  finally:
    gin.clear_config()
  # ... and its run.json still names the text its task reads (which the export leaves unread), for
  # the evaluation after it.
  r = sweep.plan(args, [])[0]
  info = sweep.run_info(r['model_dir'], r['name'], r['settings'], 20,
                        ['gin_configs/experiments/cloned_captions.gin'], r['overrides'],
                        r['data_overrides'])
  assert [os.path.basename(f) for f in info['validation_files']] == ['val.en']


def _baseline_with_steps(d, steps):
  """A monolingual run's evaluated perplexities (power-law-like) at `steps`."""
  from t5x_like.evaluation import results as results_lib
  for s in steps:
    results_lib.write_results(str(d), s, {'step': s, 'tokens_seen': {'lang0': 1000 * s},
                                          'perplexity': {'lang0': {'perplexity': 20 + 500 / s}}})
  return str(d)


def test_token_efficiency_is_left_out_with_a_note_when_the_baseline_has_too_few_checkpoints(
    tmp_path, monkeypatch):
  # 200 steps saved every 100: the fit's points past the first tenth are steps 100 and 200. The other
  # metrics are still asked for (before, teff's error cost every run its alignment and MEXA).
  calls = []
  monkeypatch.setattr(sweep.eval_lib, 'main', lambda argv: calls.append(argv) or 0)
  runs = [{'name': 'p0.0', 'model_dir': _baseline_with_steps(tmp_path / 'mono', [1, 100, 200]),
           'info': {'monolingual': True}},
          {'name': 'p0.5', 'model_dir': str(tmp_path / 'mixed'), 'info': {}}]
  said = []
  assert sweep.evaluate_runs(runs, [], say=said.append) == 0
  finals = [c[c.index('--metrics') + 1] for c in calls if '--init_control' in c]
  assert finals == ['mexa,align,grad', 'mexa,align,grad']
  notes = [s for s in said if 'note' in s]
  assert len(notes) == 1 and 'token efficiency is left out' in notes[0], said
  assert 'at 2 evaluated step(s)' in notes[0] and 'TrainerConfig.checkpoint_every' in notes[0]
  calls.clear()
  _baseline_with_steps(tmp_path / 'mono', [50, 150])
  assert sweep.evaluate_runs(runs, [], say=said.append) == 0
  finals = [c[c.index('--metrics') + 1] for c in calls if '--init_control' in c]
  assert finals == ['mexa,align,grad,teff', 'mexa,align,grad,teff']


def test_a_failed_run_is_reported_with_the_last_line_of_its_log(tmp_path):
  # Before, the console said only "FAILED (exit 2; see train.log)": why (a bad binding, a run dir in
  # use by another trainer) took opening the log.
  run = tmp_path / 'r'
  run.mkdir()
  (run / 'train.log').write_text('error: from an earlier attempt\n')
  said = []
  status = sweep.train_all(
      [{'name': 'r', 'model_dir': str(run),
        'cmd': [sys.executable, '-c', 'print("loading"); print("error: MODEL_DIR is in use")\n'
                'raise SystemExit(2)']}], jobs=1, say=said.append)
  assert status == {'r': 2}
  assert re.fullmatch(r'\[sweep\] r: FAILED \(exit 2; train.log ends: error: MODEL_DIR is in use\) '
                      r'in \d+s', said[-1]), said


def test_a_second_sweep_on_one_dir_is_refused_before_it_writes_anything(tmp_path, capsys):
  # It rewrote the first one's sweep.json and exports under its trainers, had its runs refused by
  # their writer locks, then evaluated the first one's runs a second time.
  sw = tmp_path / 'sw'
  first = writer_lock.acquire(str(sw), writer=sweep.SWEEP)  # stands for a sweep still running
  argv = [str(sw), '--gin_file=gin_configs/experiments/clone_ablation_cpu.gin', '--train_steps=20',
          '--grid', 'p_clone=0.5,0.1']
  try:
    assert sweep.main(argv + ['--dry_run']) == 0  # (reads only: no lock needed)
    capsys.readouterr()
    assert sweep.main(argv) == 2
  finally:
    first.close()
  out, err = capsys.readouterr()
  assert re.fullmatch(rf"error: SWEEP_DIR='{re.escape(str(sw))}' is in use by another sweep \(pid "
                      rf"{os.getpid()} on .*\): two sweeps on one dir would export, train and "
                      r"evaluate the same runs over each other\. .*", err.strip()), err
  assert not out and os.listdir(sw) == [writer_lock.LOCK_NAME]


def test_every_run_knows_its_evaluation_text_or_an_evaluating_sweep_stops_before_it_trains(
    tmp_path, capsys):
  # cloned_captions.gin binds its validation files to its task builder, not through a VALIDATION_FILES
  # macro: the sweep recorded none in run.json, trained every run, and then each evaluation failed
  # ("no evaluation text").
  val = os.path.abspath(os.path.join(REPO, '..', 'shared', 'data', 'parallel', 'multi30k', 'val.en'))
  for gin_file in ('cloned_captions.gin', 'clone_ablation_cpu.gin'):  # (the task's, the macro's)
    info = sweep.run_info(str(tmp_path / 'r'), 'r', {'P_CLONE': 0.1}, 20,
                          [f'gin_configs/experiments/{gin_file}'], [])
    assert info['validation_files'] == [val], gin_file
  # A config with neither: an evaluating sweep says so before it writes or trains anything.
  gin_file = tmp_path / 'no_validation.gin'
  gin_file.write_text("include 'gin_configs/examples/tiny_decoder_pretrain.gin'\n"
                      'VALIDATION_FILES = None\n')
  argv = [str(tmp_path / 'sw'), f'--gin_file={gin_file}', '--train_steps=20', '--grid', 'SEED=0,1']
  assert sweep.main(argv + ['--eval']) == 2
  assert capsys.readouterr().err.strip() == (
      'error: --eval: no evaluation text for seed0, seed1: the gin config defines no VALIDATION_FILES '
      "macro and its training task binds no validation_files; define one, or pass --eval_flags='"
      "--eval_files FILE ...'")
  assert not (tmp_path / 'sw').exists()
  assert sweep.main(argv + ['--eval', f'--eval_flags=--eval_files {val}', '--dry_run']) == 0
  assert sweep.main(argv + ['--dry_run']) == 0  # (no --eval: nothing to evaluate on is fine)
