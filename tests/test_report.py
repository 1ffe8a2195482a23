"""t5x_like/report.py on a constructed sweep: the tables carry the eval JSON's numbers, seeds are
averaged per setting, chance is called chance, and the plots are written."""
import json
import os
import pathlib
import re

import numpy as np
import pytest

from t5x_like import report
from t5x_like.evaluation import results as results_lib

LAYERS = ['embedding', 'block_0', 'block_1']


def _results(step, ppl0, ppl1, gap, se, mexa_scores, teff=None):
  al = {'layers': LAYERS, 'raw': [0.9] * 3, 'raw_mismatched': [0.88] * 3,
        'centred': [g + 0.1 for g in gap], 'centred_mismatched': [0.1] * 3, 'centred_gap': gap,
        'centred_gap_se': [se] * 3, 'num_sequences': 64, 'num_positions': 8000}
  mexa = {'pivot': 'v.txt', 'n': 100, 'chance': 0.01, 'targets': {'v.txt@1': {
      'weighted': {'by_layer': mexa_scores, 'mean': float(np.mean(mexa_scores)),
                   'max': max(mexa_scores)},
      'lasttoken': {'by_layer': [0.0] * 3, 'mean': 0.0, 'max': 0.0}}}}
  init_al = dict(al, centred_gap=[0.0] * 3, centred_gap_se=[0.002] * 3)
  init_mexa = {'pivot': 'v.txt', 'n': 100, 'targets': {'v.txt@1': {
      'weighted': {'by_layer': [0.01] * 3, 'mean': 0.01, 'max': 0.01},
      'lasttoken': {'by_layer': [0.0] * 3, 'mean': 0.0, 'max': 0.0}}}}
  r = {'step': step, 'perplexity': {'lang0': {'perplexity': ppl0}, 'lang1': {'perplexity': ppl1}},
       'alignment': {'lang1': al}, 'mexa': mexa,
       'gradient_alignment': {'lang1': {'non_vocab': 0.3, 'non_vocab_mismatched': 0.29,
                                        'all': 0.2, 'all_mismatched': 0.19,
                                        'by_block': [0.3, 0.3], 'by_block_mismatched': [0.29, 0.29]}},
       'init_control': {'alignment': {'lang1': init_al}, 'mexa': init_mexa}}
  if teff:
    r['token_efficiency'] = {'languages': {'lang0': {'teff': teff[0]}, 'lang1': {'teff': teff[1]}}}
  return r


def _run(sweep_dir, name, p_clone, seed, finals, early_ppl=(50.0, 60.0)):
  d = os.path.join(sweep_dir, name)
  os.makedirs(d)
  with open(os.path.join(d, 'run.json'), 'w') as f:
    json.dump({'name': name, 'settings': {'P_CLONE': p_clone, 'SEED': seed}, 'p_clone': p_clone,
               'schedule': None, 'monolingual': p_clone == 0.0}, f)
  results_lib.write_results(d, 10, {'step': 10, 'perplexity': {
      'lang0': {'perplexity': early_ppl[0]}, 'lang1': {'perplexity': early_ppl[1]}}})
  results_lib.write_results(d, 20, finals)


@pytest.fixture(scope='module')
def sweep_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp('sweep'))
  # 90/10 in two seeds: clear alignment at block_1 in both; 50/50: a gap within its noise.
  _run(d, 'p0.1-seed0', 0.1, 0, _results(20, 20.0, 40.0, [0.0, 0.01, 0.2], 0.01, [0.0, 0.05, 0.6],
                                          (1.1, 2.5)))
  _run(d, 'p0.1-seed1', 0.1, 1, _results(20, 21.0, 41.0, [0.0, 0.02, 0.3], 0.01, [0.0, 0.06, 0.5],
                                          (1.0, 2.4)))
  _run(d, 'p0.5-seed0', 0.5, 0, _results(20, 25.0, 25.5, [0.001, -0.002, 0.003], 0.01,
                                          [0.01, 0.0, 0.02]))
  os.makedirs(os.path.join(d, 'data'))  # not a run: ignored
  report.write_report(d)
  return d


def _table(text, header_start):
  lines = text.splitlines()
  i = next(i for i, l in enumerate(lines) if l.startswith(header_start))
  head = [c.strip() for c in lines[i].strip('|').split('|')]
  rows = []
  for l in lines[i + 2:]:
    if not l.startswith('|'):
      break
    rows.append(dict(zip(head, [c.strip() for c in l.strip('|').split('|')])))
  return rows


def test_per_run_table_equals_the_eval_json(sweep_dir):
  text = pathlib.Path(sweep_dir, 'report.md').read_text()
  rows = {r['run']: r for r in _table(text, '| run |')}
  assert set(rows) == {'p0.1-seed0', 'p0.1-seed1', 'p0.5-seed0'}
  for name, row in rows.items():
    res = results_lib.read_results(os.path.join(sweep_dir, name))[20]
    assert float(row['ppl_lang0']) == round(res['perplexity']['lang0']['perplexity'], 3)
    assert float(row['ppl_lang1']) == round(res['perplexity']['lang1']['perplexity'], 3)
    gap = res['alignment']['lang1']['centred_gap']
    assert float(row['align_gap_mean']) == pytest.approx(round(sum(gap) / len(gap), 4), abs=1e-12)
    m = res['mexa']['targets']['v.txt@1']['weighted']
    assert float(row['mexa_max']) == round(m['max'], 3)
    assert float(row['grad_cos']) == round(res['gradient_alignment']['lang1']['non_vocab'], 4)
  assert rows['p0.5-seed0']['teff_lang1'] == 'n/a'
  assert float(rows['p0.1-seed0']['teff_lang1']) == 2.5
  exact = json.loads(pathlib.Path(sweep_dir, 'report.json').read_text())['runs']
  assert exact['p0.1-seed1']['ppl_lang1'] == 41.0


def test_settings_average_seeds_and_say_what_is_chance(sweep_dir):
  text = pathlib.Path(sweep_dir, 'report.md').read_text()
  rows = {r['setting']: r for r in _table(text, '| setting |')}
  assert list(rows) == ['50/50', '90/10']  # balanced first, then growing imbalance
  assert rows['90/10']['seeds'] == '2'
  assert float(rows['90/10']['PPL lang0']) == pytest.approx(20.5)
  ratio = float(rows['90/10']['clone/lang0 (spread)'].split()[0])
  assert ratio == pytest.approx(round((40 / 20 + 41 / 21) / 2, 3))
  verdict_9010 = re.search(r'\*\*90/10\*\*: (.*)', text).group(1)
  verdict_5050 = re.search(r'\*\*50/50\*\*: (.*)', text).group(1)
  assert 'aligned beyond the untrained-model control at block_1 in every seed' in verdict_9010
  assert 'MEXA (max 0.55) beats the untrained model' in verdict_9010
  assert 'hidden-state alignment at chance' in verdict_5050
  assert 'MEXA at chance' in verdict_5050


def test_plots_are_written(sweep_dir):
  for name in ('ppl_over_steps.png', 'alignment_by_layer.png', 'mexa_by_layer.png'):
    path = os.path.join(sweep_dir, name)
    assert os.path.getsize(path) > 10_000
    assert f']({name})' in pathlib.Path(sweep_dir, 'report.md').read_text()


def test_empty_sweep_is_an_error(tmp_path):
  assert report.main([str(tmp_path)]) == 2


def test_a_mistyped_sweep_dir_is_named_in_one_line(tmp_path, capsys):
  assert report.main([str(tmp_path / 'sweeep')]) == 2
  err = capsys.readouterr().err.strip()
  assert err.count('\n') == 0 and err.startswith(f'error: {tmp_path / "sweeep"}: no such directory')


def test_the_report_names_the_code_and_says_when_runs_differ_in_it(tmp_path):
  a, b = 'a' * 40, 'b' * 40 + '-dirty'
  d = str(tmp_path)
  for name, p, trained, evaluated in (('p0.5-seed0', 0.5, [a], a), ('p0.1-seed0', 0.1, [a, b], a)):
    _run(d, name, p, 0, dict(_results(20, 20.0, 40.0, [0.0, 0.01, 0.2], 0.01, [0.0, 0.05, 0.6]),
                             source_commit=evaluated))
    for i, commit in enumerate(trained):  # the first segment's config.gin, then a resumed one's
      name_gin = 'config.gin' if i == 0 else 'config_resumed_at_10.gin'
      with open(os.path.join(d, name, name_gin), 'w') as f:
        f.write(f'# source commit: {commit}; jax 0.10.2; written 2026-12-06T00:00:00Z\n\n# Macros:\n')
  report.write_report(d)
  text = pathlib.Path(d, 'report.md').read_text()
  assert (f'Code: trained with {a[:10]} (p0.1-seed0, p0.5-seed0); {b[:10]}-dirty (p0.1-seed0); '
          f'evaluated with {a[:10]}. **The runs were not all made by one version of the code.** '
          '(-dirty: tracked files had uncommitted changes.)') in text
  assert json.loads(pathlib.Path(d, 'report.json').read_text())['code']['trained'][b] == ['p0.1-seed0']
  # One version everywhere: one commit, no warning.
  os.remove(os.path.join(d, 'p0.1-seed0', 'config_resumed_at_10.gin'))
  report.write_report(d)
  assert f'Code: trained with {a[:10]}; evaluated with {a[:10]}.\n' in pathlib.Path(
      os.path.join(d, 'report.md')).read_text()


def test_without_the_untrained_model_the_verdicts_name_what_they_compared_with(tmp_path):
  # Evaluated without --init_control, the evidence is judged against zero (the gap) and 1/n (MEXA),
  # but the verdict said "beyond the untrained-model control" (and "vs n/a for the untrained model").
  d = str(tmp_path)
  for name, p, gap, mexa in (('p0.1-seed0', 0.1, [0.0, 0.01, 0.2], [0.0, 0.05, 0.6]),
                             ('p0.5-seed0', 0.5, [0.001, -0.002, 0.003], [0.01, 0.0, 0.02])):
    r = _results(20, 20.0, 40.0, gap, 0.01, mexa)
    del r['init_control']
    _run(d, name, p, 0, r)
  text = pathlib.Path(report.write_report(d)).read_text()
  verdict_9010 = re.search(r'\*\*90/10\*\*: (.*)', text).group(1)
  verdict_5050 = re.search(r'\*\*50/50\*\*: (.*)', text).group(1)
  missing = '(no untrained-model control: evaluate with t5x_like.eval --init_control)'
  assert f'hidden states aligned beyond zero at block_1 {missing}' in verdict_9010
  assert 'MEXA (max 0.60) beats chance (0.010; no untrained-model control' in verdict_9010
  assert ('hidden-state alignment at chance: the matched-minus-mismatched gap does not beat zero by 3 '
          f'standard errors at any layer {missing}') in verdict_5050
  assert 'MEXA at chance: max 0.02 does not beat chance (0.010;' in verdict_5050
  assert 'untrained-model control at' not in text and 'for the untrained model' not in text
