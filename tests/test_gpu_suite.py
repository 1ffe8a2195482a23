"""scripts/gpu_suite.sh --cpu_smoke: the GPU suite's every step, with tiny models on CPU, so the
command prepared for a GPU allowance cannot rot between allowances."""
import json
import os
import subprocess

from conftest import REPO


def test_gpu_suite_cpu_smoke_writes_every_record(tmp_path):
  out = tmp_path / 'suite'
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env['PYTHON'] = os.path.join(REPO, '.venv', 'bin', 'python')
  p = subprocess.run(['bash', 'scripts/gpu_suite.sh', str(out), '--cpu_smoke'], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  for name, variants in (('a_decoder', {'default', 'remat_dots'}),
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
  summary = (out / 'SUMMARY.md').read_text()
  assert 'CPU smoke' in summary and '| b_encdec | 0 |' in summary
  # Same tokens, same initial parameters: the fused and the plain loss start from the same value.
  rec = json.loads((out / 'b_encdec.json').read_text())['variants']
  assert abs(rec['default']['final_loss'] - rec['plain_loss']['final_loss']) < 0.05
