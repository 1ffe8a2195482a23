"""The sweep report: `python -m t5x_like.report SWEEP_DIR` -> SWEEP_DIR/report.md, report.json and plots.

Reads every run's run.json (launch/sweep.py) and eval/<step>/results.json (t5x_like/eval.py); numbers
in the tables are those of the JSON files, rounded for display only (report.json keeps them exact).
Runs that differ only in seed form one setting: the setting's figure is the mean over seeds, with the
spread (max - min) next to it.

What counts as alignment, stated in the report too: the centred cosine of matched pairs minus that of the
mismatched control ("gap"), at a layer, is called evidence only when it beats the same gap of an
UNTRAINED model of the same config by more than 3 standard errors (clustered by token type) in every
seed; MEXA
likewise only where it beats the untrained model's MEXA by more than 3 binomial standard errors. Anything
else is reported as chance.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
from typing import Optional, Sequence

from t5x_like import provenance
from t5x_like.evaluation.results import read_results, read_run_info

Z = 3.0  # standard errors a difference must exceed to be called evidence


# --- reading ---------------------------------------------------------------------------------------

def load_sweep(sweep_dir: str) -> list[dict]:
  """[{'name', 'info', 'results': {step: results}}] of every run dir with a run.json."""
  if not os.path.isdir(sweep_dir):
    raise FileNotFoundError(f'{sweep_dir}: no such directory (pass the sweep directory that '
                            'launch/sweep.py wrote, with one run dir per setting)')
  runs = []
  for name in sorted(os.listdir(sweep_dir)):
    d = os.path.join(sweep_dir, name)
    if not os.path.exists(os.path.join(d, 'run.json')):
      continue
    runs.append({'name': name, 'dir': d, 'info': read_run_info(d), 'results': read_results(d)})
  return runs


def code_versions(runs: list[dict]) -> dict:
  """{'trained': {commit: [runs]}, 'evaluated': {commit: [runs]}}: the commits in each run's
  config*.gin headers (a resumed segment writes its own) and in its final results.json; 'unknown'
  where a run predates them."""
  out = {'trained': {}, 'evaluated': {}}
  for r in runs:
    for path in sorted(glob.glob(os.path.join(r['dir'], 'config*.gin'))):
      with open(path) as f:
        commit = provenance.commit_in_run_file(f.readline()) or 'unknown'
      names = out['trained'].setdefault(commit, [])
      if r['name'] not in names:
        names.append(r['name'])
    final = r['results'][max(r['results'])] if r['results'] else {}
    out['evaluated'].setdefault(final.get('source_commit') or 'unknown', []).append(r['name'])
  return out


def _code_line(code: dict) -> str:
  def which(commits: dict) -> str:
    if len(commits) == 1:
      return provenance.short(next(iter(commits)))
    return '; '.join(f'{provenance.short(c)} ({", ".join(names)})' for c, names in sorted(commits.items()))
  line = f'Code: trained with {which(code["trained"])}; evaluated with {which(code["evaluated"])}.'
  if len(code['trained']) > 1 or len(code['evaluated']) > 1:
    line += ' **The runs were not all made by one version of the code.**'
  if any(c.endswith('-dirty') for d in code.values() for c in d):
    line += ' (-dirty: tracked files had uncommitted changes.)'
  return line


def label(info: dict) -> str:
  """A reader's name for a setting: '90/10', '50/50', 'monolingual', 'sched 0.1_0.9', + other keys."""
  s = dict(info.get('settings', {}))
  s.pop('SEED', None)
  parts = []
  sched = s.pop('SCHEDULE', info.get('schedule'))
  p = s.pop('P_CLONE', info.get('p_clone'))
  if sched not in (None, 'none'):
    parts.append(f'sched {sched}')
  elif p is not None:
    parts.append('monolingual' if not p else f'{100 * (1 - p):.0f}/{100 * p:.0f}')
  parts += [f'{k.lower()}={v}' for k, v in s.items()]
  return ' '.join(parts) or info.get('setting', 'default')


def final(run: dict) -> Optional[dict]:
  return run['results'][max(run['results'])] if run['results'] else None


def _f(x, nd=3) -> str:
  if x is None or (isinstance(x, float) and not math.isfinite(x)):
    return 'n/a'
  return f'{x:.{nd}f}'


def _mean(xs):
  xs = [x for x in xs if x is not None]
  return sum(xs) / len(xs) if xs else None


def _spread(xs):
  xs = [x for x in xs if x is not None]
  return max(xs) - min(xs) if len(xs) > 1 else None


# --- numbers per run -------------------------------------------------------------------------------

def run_row(run: dict) -> dict:
  """The numbers of one run at its final evaluated step, straight from results.json."""
  r = final(run) or {}
  row = {'run': run['name'], 'setting': label(run['info']), 'step': r.get('step')}
  for lang, p in r.get('perplexity', {}).items():
    row[f'ppl_{lang}'] = p['perplexity']
    if 'last_n' in p:
      row[f'ppl_last_{lang}'] = p['last_n']['perplexity']
  if 'ppl_lang0' in row and 'ppl_lang1' in row and not run['info'].get('monolingual'):
    row['ppl_ratio'] = row['ppl_lang1'] / row['ppl_lang0']  # (a monolingual run never saw the clone)
  for lang, t in r.get('token_efficiency', {}).get('languages', {}).items():
    row[f'teff_{lang}'] = t.get('teff')
  al = r.get('alignment', {}).get('lang1')
  if al:
    row['align_gap_mean'] = _mean(al['centred_gap'])
    row['align_gap_max'] = max(al['centred_gap'])
    row['align_evidence_layers'] = evidence_layers(r)
    init = r.get('init_control', {}).get('alignment', {})
    row['align_untrained_control'] = bool(init.get('lang1'))
  g = r.get('gradient_alignment', {}).get('lang1')
  if g:
    row['grad_cos'] = g['non_vocab']
    row['grad_cos_control'] = g['non_vocab_mismatched']
  m = _first_target(r.get('mexa'))
  if m:
    row['mexa_mean'] = m['weighted']['mean']
    row['mexa_max'] = m['weighted']['max']
    row['mexa_last_mean'] = m['lasttoken']['mean']
    mi = _first_target(r.get('init_control', {}).get('mexa'))
    if mi:
      row['mexa_init_max'] = mi['weighted']['max']
    row['mexa_evidence_layers'] = mexa_evidence_layers(r)
    row['mexa_chance'] = r['mexa']['chance']
  return row


def _first_target(mexa: Optional[dict]) -> Optional[dict]:
  if not mexa or not mexa.get('targets'):
    return None
  return next(iter(mexa['targets'].values()))


NO_INIT_CONTROL = 'no untrained-model control: evaluate with t5x_like.eval --init_control'


def evidence_layers(r: dict, lang: str = 'lang1') -> list[str]:
  """Layers whose centred gap beats the untrained model's (or 0 without that control) by Z SEs."""
  al = r['alignment'][lang]
  init = r.get('init_control', {}).get('alignment', {}).get(lang)
  out = []
  for i, name in enumerate(al['layers']):
    gap, se = al['centred_gap'][i], al['centred_gap_se'][i] or 0.0
    base, se0 = (init['centred_gap'][i], init['centred_gap_se'][i] or 0.0) if init else (0.0, 0.0)
    if gap - base > Z * math.sqrt(se ** 2 + se0 ** 2) and gap - base > 0.01:
      out.append(name)
  return out


def mexa_evidence_layers(r: dict) -> list[str]:
  m = _first_target(r.get('mexa'))
  mi = _first_target(r.get('init_control', {}).get('mexa'))
  n = r['mexa']['n']
  out = []
  for i, s in enumerate(m['weighted']['by_layer']):
    base = mi['weighted']['by_layer'][i] if mi else 1.0 / n
    p = max(base, 1.0 / n)
    if s - base > Z * math.sqrt(p * (1 - p) / n + max(s, 1.0 / n) * (1 - s) / n):
      out.append('embedding' if i == 0 else f'block_{i - 1}')
  return out


def ppl_curves(run: dict) -> dict[str, list[tuple[int, float]]]:
  out: dict = {}
  for step, r in run['results'].items():
    for lang, p in r.get('perplexity', {}).items():
      out.setdefault(lang, []).append((step, p['perplexity']))
  return out


# --- grouping -------------------------------------------------------------------------------------

def group(runs: list[dict]) -> dict[str, list[dict]]:
  out: dict = {}
  for r in runs:
    out.setdefault(label(r['info']), []).append(r)
  # balanced first, then growing imbalance, then schedules, the monolingual reference last
  def key(item):
    info = item[1][0]['info']
    return (bool(info.get('monolingual')), info.get('schedule') not in (None, 'none'),
            -(info.get('p_clone') or 0), item[0])
  return dict(sorted(out.items(), key=key))


# --- writing -------------------------------------------------------------------------------------

RUN_COLUMNS = [('run', None), ('step', None), ('ppl_lang0', 3), ('ppl_lang1', 3), ('ppl_ratio', 3),
               ('teff_lang0', 3), ('teff_lang1', 3), ('align_gap_mean', 4), ('grad_cos', 4),
               ('grad_cos_control', 4), ('mexa_mean', 3), ('mexa_max', 3), ('mexa_init_max', 3)]


def _cell(row: dict, key: str, nd: Optional[int]) -> str:
  v = row.get(key)
  if nd is None:
    return '' if v is None else str(v)
  return _f(v, nd)


def write_report(sweep_dir: str, out_dir: Optional[str] = None) -> str:
  out_dir = out_dir or sweep_dir
  runs = [r for r in load_sweep(sweep_dir) if r['results']]
  if not runs:
    raise ValueError(f'no evaluated run under {sweep_dir} (run launch.sweep with --eval)')
  groups = group(runs)
  rows = {r['name']: run_row(r) for r in runs}
  plots = make_plots(groups, out_dir)
  code = code_versions(runs)
  lines = [f'# Cloned-language ablation: {os.path.basename(os.path.abspath(sweep_dir))}', '',
           _code_line(code), '']
  lines += _setting_table(groups, rows)
  lines += ['', '## What the numbers say', '']
  lines += _verdicts(groups, rows)
  lines += ['', '## Per run (final evaluated step; values as in each eval/<step>/results.json)', '']
  lines.append('| ' + ' | '.join(k for k, _ in RUN_COLUMNS) + ' |')
  lines.append('|' + '---|' * len(RUN_COLUMNS))
  for r in runs:
    lines.append('| ' + ' | '.join(_cell(rows[r['name']], k, nd) for k, nd in RUN_COLUMNS) + ' |')
  lines += ['', '## Alignment by layer (mean over seeds)', '']
  lines += _layer_table(groups)
  lines += ['', '## Plots', ''] + [f'![{t}]({os.path.basename(p)})' for t, p in plots.items()]
  lines += ['', _definitions()]
  text = '\n'.join(lines) + '\n'
  path = os.path.join(out_dir, 'report.md')
  with open(path, 'w') as f:
    f.write(text)
  with open(os.path.join(out_dir, 'report.json'), 'w') as f:
    json.dump({'runs': rows, 'plots': plots, 'code': code}, f, indent=1)
  return path


def _setting_table(groups, rows) -> list[str]:
  head = ('| setting | seeds | step | PPL lang0 | PPL clone | clone/lang0 (spread) | TEff lang0 | '
          'TEff clone | align gap (mean over layers) | grad cos (control) | MEXA mean / max (untrained max) |')
  out = [head, '|' + '---|' * (head.count('|') - 1)]
  for name, runs in groups.items():
    rs = [rows[r['name']] for r in runs]
    m = lambda k: _mean([r.get(k) for r in rs])
    ratio_spread = _spread([r.get('ppl_ratio') for r in rs])
    ratio = _f(m('ppl_ratio')) + (f' (±{_f(ratio_spread / 2)})' if ratio_spread is not None else '')
    steps = sorted({r['step'] for r in rs})
    out.append(f"| {name} | {len(rs)} | {','.join(map(str, steps))} | {_f(m('ppl_lang0'), 2)} | "
               f"{_f(m('ppl_lang1'), 2)} | {ratio} | {_f(m('teff_lang0'), 2)} | "
               f"{_f(m('teff_lang1'), 2)} | {_f(m('align_gap_mean'), 4)} | "
               f"{_f(m('grad_cos'), 3)} ({_f(m('grad_cos_control'), 3)}) | "
               f"{_f(m('mexa_mean'), 2)} / {_f(m('mexa_max'), 2)} ({_f(m('mexa_init_max'), 2)}) |")
  return out


def _verdicts(groups, rows) -> list[str]:
  out = []
  for name, runs in groups.items():
    rs = [rows[r['name']] for r in runs]
    bits = []
    ratio = _mean([r.get('ppl_ratio') for r in rs])
    if runs[0]['info'].get('monolingual'):
      bits.append('never trains on the clone: the reference for token efficiency and for what the '
                  'alignment metrics give without any shared training')
    if ratio is not None:
      spread = _spread([r.get('ppl_ratio') for r in rs])
      bits.append(f'clone/original perplexity {ratio:.2f}' +
                  (f' (seed spread {spread:.2f})' if spread is not None else ' (one seed: no spread)'))
    if any('align_gap_mean' in r for r in rs):
      per_seed = [set(r.get('align_evidence_layers', [])) for r in rs]
      common = sorted(set.intersection(*per_seed), key=_layer_key) if per_seed else []
      # (evidence_layers compares with 0 where a run has no untrained-model control: say so)
      untrained = all(r.get('align_untrained_control') for r in rs)
      control = 'the untrained-model control' if untrained else 'zero'
      missing = '' if untrained else f' ({NO_INIT_CONTROL})'
      if common:
        bits.append(f'hidden states aligned beyond {control} at {", ".join(common)}'
                    f'{" in every seed" if len(rs) > 1 else ""}{missing}')
      else:
        bits.append('hidden-state alignment at chance: the matched-minus-mismatched gap does not beat '
                    f'{"the untrained model" if untrained else "zero"} by 3 standard errors at any '
                    'layer' + (' in every seed' if len(rs) > 1 else '') + missing)
    if any('grad_cos' in r for r in rs):
      g, c = _mean([r.get('grad_cos') for r in rs]), _mean([r.get('grad_cos_control') for r in rs])
      bits.append(f'gradient cosine {g:.3f} vs {c:.3f} for mismatched batches')
    if any('mexa_mean' in r for r in rs):
      per_seed = [set(r.get('mexa_evidence_layers', [])) for r in rs]
      common = sorted(set.intersection(*per_seed), key=_layer_key)
      mx = _mean([r.get('mexa_max') for r in rs])
      mi = _mean([r.get('mexa_init_max') for r in rs])
      if all(r.get('mexa_init_max') is not None for r in rs if 'mexa_mean' in r):
        control = f'the untrained model ({_f(mi, 2)})'
      else:  # (mexa_evidence_layers compares with chance, 1/n, without the control)
        control = (f'chance ({_f(_mean([r.get("mexa_chance") for r in rs]), 3)}; '
                   f'{NO_INIT_CONTROL})')
      if common:
        bits.append(f'MEXA (max {mx:.2f}) beats {control} at {", ".join(common)}')
      else:
        bits.append(f'MEXA at chance: max {mx:.2f} does not beat {control} at any layer')
    out.append(f'- **{name}**: ' + '; '.join(bits) + '.')
  return out


def _layer_key(name: str) -> int:
  return -1 if name == 'embedding' else int(name.split('_')[1])


def _layer_table(groups) -> list[str]:
  out = []
  for name, runs in groups.items():
    finals = [final(r) for r in runs]
    als = [f['alignment']['lang1'] for f in finals if f and 'alignment' in f]
    if not als:
      continue
    inits = [f['init_control']['alignment']['lang1'] for f in finals
             if f and 'alignment' in f.get('init_control', {})]
    out += [f'**{name}** ({len(als)} seed{"s" * (len(als) > 1)})', '',
            '| layer | raw | raw control | centred | centred control | gap ± se | untrained gap |',
            '|---|---|---|---|---|---|---|']
    for i, layer in enumerate(als[0]['layers']):
      v = lambda k: _mean([a[k][i] for a in als])
      init = _f(_mean([a['centred_gap'][i] for a in inits]), 4) if inits else 'n/a'
      out.append(f"| {layer} | {_f(v('raw'))} | {_f(v('raw_mismatched'))} | {_f(v('centred'))} | "
                 f"{_f(v('centred_mismatched'))} | {_f(v('centred_gap'), 4)} ± "
                 f"{_f(v('centred_gap_se'), 4)} | {init} |")
    out.append('')
  return out


def _definitions() -> str:
  return '\n'.join([
      '## Definitions', '',
      '- PPL: per-language perplexity on the held-out text, every language on the same text '
      '(language k = the same ids shifted into clone k). "clone/lang0" is their ratio.',
      '- TEff: tokens a monolingual run needs for the same perplexity (power-law fit of the '
      'monolingual runs\' checkpoints) / tokens the run saw in that language. >1: gained from the '
      'other language.',
      '- align gap: centred cosine (each language minus its own mean hidden state) of the same text at '
      'the same positions, minus the same for the mismatched control (language 0 of sequence i vs the '
      'clone of sequence i+1). The raw cosine is listed but misleads (shared mean directions and '
      'positions make any two states look similar).',
      '- grad cos: cosine of the gradients (all parameters but the vocabulary matrices) of the same '
      'batch in both languages; control: different batches.',
      '- MEXA: fraction of parallel sentences whose partner is the strict nearest neighbour by cosine '
      'in both row and column (position-weighted mean embeddings), per layer; mean and max over '
      'layers. Chance is about 1/n. "untrained": the same metric on a freshly initialised model of the '
      'same config -- what length and position alone give.',
      f'- Evidence means beating the untrained model by more than {Z:.0f} standard errors (for the '
      'gap clustered by token type, since the same token pairs recur in every sequence; binomial '
      'for MEXA), in every seed; anything else is called chance. A run evaluated without the '
      'untrained model (no `--init_control`) is compared with zero (the gap) or 1/n (MEXA) '
      'instead, and its verdict says so.'])


# --- plots ----------------------------------------------------------------------------------------

def make_plots(groups, out_dir: str) -> dict[str, str]:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  plt.rcParams.update({'font.size': 9, 'axes.spines.top': False, 'axes.spines.right': False})
  colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
  col = {name: colors[i % len(colors)] for i, name in enumerate(groups)}
  paths = {}

  # 1. Perplexity over steps, one panel per language, then the clone/original ratio; mean over
  # seeds, min-max band. Monolingual runs never train on the clone: left out of the clone panels.
  langs = sorted({lang for runs in groups.values() for r in runs for lang in ppl_curves(r)})
  if langs:
    panels = langs + (['ratio'] if 'lang1' in langs else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 2.8), squeeze=False)
    for ax, panel in zip(axes[0], panels):
      for name, runs in groups.items():
        if panel != 'lang0' and runs[0]['info'].get('monolingual'):
          continue
        curves = []
        for r in runs:
          c = {l: dict(v) for l, v in ppl_curves(r).items()}
          if panel == 'ratio':
            curves.append({s: c['lang1'][s] / c['lang0'][s] for s in c.get('lang0', {})
                           if s in c.get('lang1', {})})
          else:
            curves.append(c.get(panel, {}))
        steps = sorted(set.intersection(*[set(c) for c in curves])) if curves else []
        if not steps:
          continue
        ys = [[c[s] for c in curves] for s in steps]
        ax.plot(steps, [sum(y) / len(y) for y in ys], color=col[name], label=name, marker='o',
                ms=2.5)
        if len(runs) > 1:
          ax.fill_between(steps, [min(y) for y in ys], [max(y) for y in ys], color=col[name],
                          alpha=0.2, lw=0)
      ax.set_xlabel('training step')
      if panel == 'ratio':
        ax.axhline(1.0, color='grey', lw=0.6)
        ax.set_title('clone / original perplexity')
      else:
        ax.set_yscale('log')
        ax.set_ylabel('held-out perplexity')
        ax.set_title('original (language 0)' if panel == 'lang0' else f'clone ({panel})')
    axes[0][0].legend(frameon=False)
    fig.tight_layout()
    paths['perplexity over steps'] = _save(fig, out_dir, 'ppl_over_steps.png')

  # 2. Alignment by layer: raw (misleading) vs centred, matched vs controls; gradient cosine by block.
  have = {n: rs for n, rs in groups.items() if any(final(r) and 'alignment' in final(r) for r in rs)}
  if have:
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.2))
    drawn_init = False
    for name, runs in have.items():
      als = [final(r)['alignment']['lang1'] for r in runs if 'alignment' in final(r)]
      x = list(range(len(als[0]['layers'])))
      mean = lambda k: [sum(a[k][i] for a in als) / len(als) for i in x]
      axes[0].plot(x, mean('raw'), color=col[name], label=name)
      axes[0].plot(x, mean('raw_mismatched'), color=col[name], ls='--')
      axes[1].errorbar(x, mean('centred_gap'), yerr=mean('centred_gap_se'), color=col[name],
                       label=name, capsize=2)
      inits = [final(r)['init_control']['alignment']['lang1'] for r in runs
               if 'alignment' in final(r).get('init_control', {})]
      if inits and not drawn_init:  # one config, one untrained model: drawn once
        axes[1].plot(x, [sum(a['centred_gap'][i] for a in inits) / len(inits) for i in x],
                     color='grey', ls=':', label='untrained model')
        drawn_init = True
      gr = [final(r)['gradient_alignment']['lang1'] for r in runs
            if 'gradient_alignment' in final(r)]
      if gr:
        xb = list(range(len(gr[0]['by_block'])))
        axes[2].plot(xb, [sum(g['by_block'][i] for g in gr) / len(gr) for i in xb], color=col[name],
                     marker='o', ms=3, label=name)
        axes[2].plot(xb, [sum(g['by_block_mismatched'][i] for g in gr) / len(gr) for i in xb],
                     color=col[name], ls='--')
    names = als[0]['layers']
    for ax in axes[:2]:
      ax.set_xticks(range(len(names)))
      ax.set_xticklabels(['emb'] + [str(i) for i in range(len(names) - 1)])
      ax.set_xlabel('layer (emb = embedding output, then blocks)')
    axes[0].set_title('raw cosine\n(dashed: mismatched control)')
    axes[0].set_ylabel('cosine, original vs clone')
    axes[1].set_title('centred, matched - mismatched\n(± se clustered by token type)')
    axes[1].axhline(0, color='grey', lw=0.6)
    if not any('gradient_alignment' in (final(r) or {}) for rs in have.values() for r in rs):
      axes[2].text(0.5, 0.5, 'not evaluated\n(t5x_like.eval --metrics grad)', ha='center',
                   va='center', color='grey', transform=axes[2].transAxes)
      axes[2].set_yticks([])
    axes[2].set_title('gradient cosine by block\n(dashed: mismatched control)')
    axes[2].set_xlabel('block')
    axes[2].xaxis.get_major_locator().set_params(integer=True)
    axes[2].axhline(0, color='grey', lw=0.6)
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc='lower center', ncol=len(labels), frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))  # room for the shared legend below the panels
    paths['alignment by layer'] = _save(fig, out_dir, 'alignment_by_layer.png')

  # 3. MEXA by layer (weighted solid, last-token dashed), the untrained model and chance.
  have = {n: rs for n, rs in groups.items() if any(final(r) and 'mexa' in final(r) for r in rs)}
  if have:
    fig, ax = plt.subplots(figsize=(4.2, 2.9))
    n_sent = None
    drawn_init = False
    for name, runs in have.items():
      ms = [_first_target(final(r)['mexa']) for r in runs if 'mexa' in final(r)]
      n_sent = final(runs[0])['mexa']['n']
      x = list(range(len(ms[0]['weighted']['by_layer'])))
      for pool, ls in (('weighted', '-'), ('lasttoken', '--')):
        ax.plot(x, [sum(m[pool]['by_layer'][i] for m in ms) / len(ms) for i in x], color=col[name],
                ls=ls, label=name if pool == 'weighted' else None)
      inits = [_first_target(final(r).get('init_control', {}).get('mexa')) for r in runs]
      inits = [m for m in inits if m]
      if inits and not drawn_init:
        ax.plot(x, [sum(m['weighted']['by_layer'][i] for m in inits) / len(inits) for i in x],
                color='grey', ls=':', label='untrained model')
        drawn_init = True
    if n_sent:
      ax.axhline(1.0 / n_sent, color='grey', lw=0.6)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xticks(x)
    ax.set_xticklabels(['emb'] + [str(i - 1) for i in x[1:]])
    ax.set_xlabel('layer (emb = embedding output, then blocks)')
    ax.set_ylabel('MEXA')
    ax.set_title('MEXA (solid: weighted, dashed: last token)', fontsize=8)
    ax.legend(frameon=False)
    fig.tight_layout()
    paths['MEXA by layer'] = _save(fig, out_dir, 'mexa_by_layer.png')
  return paths


def _save(fig, out_dir: str, name: str) -> str:
  import matplotlib.pyplot as plt
  path = os.path.join(out_dir, name)
  fig.savefig(path, dpi=160)
  plt.close(fig)
  return path


def main(argv: Optional[Sequence[str]] = None) -> int:
  p = argparse.ArgumentParser(prog='python -m t5x_like.report', description=__doc__.split('\n')[0])
  p.add_argument('sweep_dir')
  p.add_argument('--out_dir', help='where report.md and the PNGs go (default: SWEEP_DIR)')
  args = p.parse_args(argv)
  try:
    path = write_report(args.sweep_dir, args.out_dir)
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'report: {path}')
  return 0


if __name__ == '__main__':
  sys.stdout.reconfigure(line_buffering=True)  # (to a log file too, each line as printed)
  sys.exit(main())
