"""scripts/gpu_suite.sh --cpu_smoke: the GPU suite's every step, with tiny models on CPU, so the
command prepared for a GPU allowance cannot rot between allowances. Step (c), the cloned-language
ablation, runs under the suite's guard that hides tensorflow and seqio, as on the GPU image."""
import json
import os
import signal
import subprocess
import sys
import time

from conftest import REPO


def test_gpu_suite_cpu_smoke_writes_every_record(tmp_path):
  out = tmp_path / 'suite'
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env['PYTHON'] = os.path.join(REPO, '.venv', 'bin', 'python')
  p = subprocess.run(['bash', 'scripts/gpu_suite.sh', str(out), '--cpu_smoke'], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  for name, variants in (('a_decoder', {'default', 'remat_none'}),
                         ('a_decoder_xla_flags', {'default'}),
                         ('b_encdec', {'default', 'plain_loss'})):
    rec = json.loads((out / f'{name}.json').read_text())
    for key in ('commit', 'device', 'jax_version', 'flop_formula', 'peak_note'):
      assert rec[key], (name, key)
    assert set(rec['variants']) == variants
    for v in rec['variants'].values():
      assert v['step_ms'] > 0 and v['tokens_per_s'] > 0 and v['flops_per_token'] > 0, v
      assert 0 < v['final_loss'] < 20, v
    table = (out / f'{name}.md').read_text()
    assert all(f'| {v} |' in table for v in variants)
  # (a)'s default variant traced by jax's profiler, its events summed in the record and the table.
  prof = json.loads((out / 'a_decoder.json').read_text())['profile']
  assert prof['variant'] == 'default' and prof['steps'] == 3 and os.path.getsize(prof['trace']) > 0
  assert prof['trace'].startswith(str(out / 'a_profile' / 'plugins' / 'profile'))
  assert prof['ops'] and prof['ops'][0]['ms'] > 0 and 0 < sum(o['share'] for o in prof['ops']) <= 1
  assert "Where the time of `default` went (3 traced steps" in (out / 'a_decoder.md').read_text()
  summary = (out / 'SUMMARY.md').read_text()
  assert 'CPU smoke' in summary and '| b_encdec | 0 |' in summary
  # Same tokens, same initial parameters: the fused and the plain loss start from the same value.
  rec = json.loads((out / 'b_encdec.json').read_text())['variants']
  assert abs(rec['default']['final_loss'] - rec['plain_loss']['final_loss']) < 0.05

  # (c): data exported on the spot, then three runs trained, evaluated and reported without TF/seqio.
  assert '| c_prepare | 0 |' in summary and '| c_ablation | 0 |' in summary, summary
  rec = json.loads((out / 'c_ablation.json').read_text())
  assert rec['commit'] and rec['device'] and rec['train_steps'] == 20
  runs = rec['runs']
  assert set(runs) == {'p0.5-seed0', 'p0.1-seed0', 'p0.0-seed0'}, runs
  for name, row in runs.items():
    assert row['step'] == 20 and 1 < row['ppl_lang0'] < 1000, (name, row)
    assert row['mexa_max'] is not None and row['mexa_init_max'] is not None, (name, row)
  for name in ('p0.5-seed0', 'p0.1-seed0'):  # the runs that saw the clone: alignment and TEff
    assert runs[name]['align_gap_mean'] is not None and runs[name]['teff_lang0'] is not None, runs[name]
  # The monolingual run never sees the clone, 50/50 sees it half the time: the clone's perplexity
  # is higher for the first, even after 20 steps.
  assert runs['p0.0-seed0']['ppl_lang1'] > runs['p0.5-seed0']['ppl_lang1']
  report = (out / 'c_ablation' / 'report.md').read_text()
  assert '| 50/50 |' in report and '| 90/10 |' in report and '| monolingual |' in report
  assert rec['plots'] and all(os.path.getsize(p) > 1000 for p in rec['plots'].values())
  # Each run's compile of the train step, read from its train.log (the sweep's compilation cache
  # serves the runs after the first when they run one after another, as on the GPU).
  assert set(rec['train_step_compiles']) == set(runs)
  assert all(len(c) == 1 and c[0]['compile_s'] > 0 for c in rec['train_step_compiles'].values()), rec
  cached = sorted(c[0]['from_cache'] for c in rec['train_step_compiles'].values())
  assert cached == [False, True, True], rec  # (one after another: the first run compiles)
  line, = [l for l in (out / 'c_ablation.md').read_text().splitlines()
            if l.startswith('Train step compile per run: ')]
  assert all(f'{run} ' in line for run in runs), line
  assert '## (c) cloned-language ablation' in summary
  for run in runs:  # each run read its export (the suite exits 2 if its guard lets seqio through)
    assert 'DataConfig.export_dir=' in (out / 'c_ablation' / run / 'train.log').read_text()


def test_a_benchmark_stopped_by_its_time_limit_keeps_the_rounds_it_timed(tmp_path):
  # The suite's steps run under `timeout`; a 1B variant that compiles late must not cost the record.
  out, md = tmp_path / 'a.json', tmp_path / 'a.md'
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env.update(PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  p = subprocess.Popen([sys.executable, 'benchmarks/train_step_throughput.py', '--preset',
                        'smoke_decoder', '--variants', 'default,plain_loss', '--rounds', '100000',
                        '--steps', '1', '--out', str(out), '--markdown', str(md)],
                       cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.monotonic() + 300
    while not (out.exists() and json.loads(out.read_text())['rounds_done'] >= 2):
      assert p.poll() is None and time.monotonic() < deadline, p.returncode
      time.sleep(0.2)
    p.send_signal(signal.SIGTERM)  # what `timeout` sends
    assert p.wait(timeout=60) != 0
  finally:
    p.kill()
  rec = json.loads(out.read_text())  # never half-written: the last complete record
  assert 2 <= rec['rounds_done'] < rec['rounds'] and list(rec['variants']) == ['default', 'plain_loss']
  for v in rec['variants'].values():
    assert len(v['round_median_step_ms']) >= 2 and v['step_ms'] > 0, v
  table = md.read_text()  # (written after the record: it may be a round behind)
  assert 'of 100000 timed rounds.' in table and '| plain_loss | 0.05M |' in table, table


def test_clone_suite_run_refuses_unprepared_data(tmp_path, capsys):
  from launch import clone_suite
  assert clone_suite.main(['run', str(tmp_path / 'nodata'), str(tmp_path / 'out')]) == 2
  err = capsys.readouterr().err
  assert 'prepare.json missing' in err and 'gpu_bundle.sh' in err
  assert not (tmp_path / 'out').exists()  # nothing started, nothing written


def test_sweep_export_only_needs_export(tmp_path, capsys):
  from launch import sweep
  argv = [str(tmp_path / 'sw'), '--gin_file=gin_configs/experiments/clone_ablation_cpu.gin',
          '--train_steps=5', '--export_only']
  assert sweep.main(argv) == 2
  assert '--export_only needs --export' in capsys.readouterr().err
  assert not (tmp_path / 'sw').exists()
