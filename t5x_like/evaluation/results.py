"""Where a run's evaluation results live, and their TensorBoard view: MODEL_DIR/eval/<step>/results.json
(written by `python -m t5x_like.eval`), MODEL_DIR/run.json (written by launch/sweep.py) and the finished
checkpoint steps. Plain files only: `t5x_like.report` reads them without importing jax."""
from __future__ import annotations

import json
import math
import os


def results_path(model_dir: str, step: int) -> str:
  return os.path.join(model_dir, 'eval', str(step), 'results.json')


def read_run_info(model_dir: str) -> dict:
  path = os.path.join(model_dir, 'run.json')
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def checkpoint_steps(model_dir: str) -> list[int]:
  """Finished checkpoint steps (orbax writes into a temporary name and renames when done)."""
  d = os.path.join(model_dir, 'checkpoints')
  if not os.path.isdir(d):
    return []
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def read_results(model_dir: str) -> dict[int, dict]:
  """{step: results} of every evaluated step of a run."""
  out = {}
  d = os.path.join(model_dir, 'eval')
  if os.path.isdir(d):
    for name in os.listdir(d):
      p = os.path.join(d, name, 'results.json')
      if name.isdigit() and os.path.exists(p):
        with open(p) as f:
          out[int(name)] = json.load(f)
  return dict(sorted(out.items()))


def _json_safe(x):
  if isinstance(x, float) and not math.isfinite(x):
    return None  # JSON has no inf/nan; the reader sees null
  if isinstance(x, dict):
    return {k: _json_safe(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_json_safe(v) for v in x]
  return x


def write_results(model_dir: str, step: int, results: dict) -> str:
  path = results_path(model_dir, step)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  merged = {}
  if os.path.exists(path):
    with open(path) as f:
      merged = json.load(f)
  for k, v in _json_safe(results).items():
    # One level deep: e.g. init_control.alignment from a later call keeps init_control.mexa.
    if isinstance(v, dict) and isinstance(merged.get(k), dict) and k == 'init_control':
      merged[k].update(v)
    else:
      merged[k] = v
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(merged, f, indent=1)
  os.replace(tmp, path)  # a reader never sees half a file
  return path


def scalars(results: dict) -> dict[str, float]:
  """The TensorBoard view of a results dict: one tag per number worth a curve."""
  out = {}
  for lang, r in results.get('perplexity', {}).items():
    out[f'ppl/{lang}'] = r['perplexity']
    if 'last_n' in r:
      out[f'ppl_last{r["last_n"]["n"]}/{lang}'] = r['last_n']['perplexity']
  for lang, r in results.get('alignment', {}).items():
    for name, v in zip(r['layers'], r['centred_gap']):
      out[f'align_centred_gap/{lang}/{name}'] = v
    for name, v in zip(r['layers'], r['raw']):
      out[f'align_raw/{lang}/{name}'] = v
  for lang, r in results.get('gradient_alignment', {}).items():
    out[f'grad_cos/{lang}/non_vocab'] = r['non_vocab']
    out[f'grad_cos/{lang}/non_vocab_mismatched'] = r['non_vocab_mismatched']
  for target, r in results.get('mexa', {}).get('targets', {}).items():
    for pool, s in r.items():
      out[f'mexa/{target}/{pool}_mean'] = s['mean']
      out[f'mexa/{target}/{pool}_max'] = s['max']
  for lang, r in results.get('token_efficiency', {}).get('languages', {}).items():
    if r.get('teff') is not None:
      out[f'teff/{lang}'] = r['teff']
  if 'translation' in results:
    out['translation/bleu'] = results['translation']['bleu']
    out['translation/chrf'] = results['translation']['chrf']
  return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(float(v))}
