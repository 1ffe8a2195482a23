"""Step (c) of the GPU suite: the cloned-language ablation, prepared on a CPU machine with seqio and
run on a machine without TensorFlow (scripts/gpu_bundle.sh, scripts/gpu_suite.sh).

    python -m launch.clone_suite prepare DATA_DIR [--text VERSES.txt] [--train_steps N] \
        [--vocab_size V] [--gin_file F] [--eval_windows W] [--gin NAME=VALUE ...]  # needs seqio
    python -m launch.clone_suite run DATA_DIR OUT_DIR [--jobs N] [--record FILE.json] [--markdown FILE.md]

`prepare` takes the World English Bible (apt package sword-text-web, as launch/demo.py; installed
when run as root, else a clear error) or --text (one verse or sentence a line), splits it (every 50th
line held out, launch/mini_ablation.py), trains the shared
SentencePiece vocabulary and exports the data of the three runs (50/50, 90/10, monolingual) with
`launch.sweep --export --export_only` to DATA_DIR/exports/<run>; DATA_DIR/prepare.json keeps the
arguments, so that `run` trains exactly what was exported. DATA_DIR then holds data/valid.txt (the
held-out verses, for evaluation), the exports and prepare.json: the training text is not needed again.
`run` points OUT_DIR/exports at DATA_DIR's and runs the same sweep with training, evaluation and the
report; nothing in it imports TensorFlow or seqio. It writes a JSON record and a markdown summary of
the report (per run: perplexity per language, clone/original ratio, token efficiency, alignment,
gradient alignment and MEXA with their controls; the verdicts; the step's wall time).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from typing import Optional, Sequence

import jax

from launch import demo
from launch import mini_ablation
from launch import sweep
from t5x_like import compilation_cache
from t5x_like import provenance

PREPARED = 'prepare.json'
_COMPILED = re.compile(rf'compiled train step in ([0-9.]+)s( \({re.escape(compilation_cache.LOADED)}\))?')


def prepare(args) -> int:
  data_dir = os.path.abspath(args.data_dir)
  if os.path.exists(os.path.join(data_dir, PREPARED)):
    print(f'error: {data_dir} is already prepared (remove it to prepare again)', file=sys.stderr)
    return 2
  t0 = time.time()
  verses = args.text
  if not verses:
    from tasks import sources
    demo.ensure_sword_bible()
    verses = os.path.join(data_dir, 'verses.txt')
    os.makedirs(data_dir, exist_ok=True)
    with open(verses, 'w', encoding='utf-8') as f:
      f.writelines(v + '\n' for _, v in sources.read_sword_bible(demo.SWORD_MODULE))
  train, valid = mini_ablation.split_text(verses, os.path.join(data_dir, 'data'))
  if not args.text:
    os.remove(verses)
  from tasks import vocab  # seqio: only the preparing machine has it
  vocab.sentencepiece_vocabulary(train_files=[train], vocab_size=args.vocab_size)
  # The sweep's own directory layout: SWEEP_DIR/exports/<run>; the run dirs it writes beside them
  # (run.json only) are dropped, the machine that trains makes its own.
  work = os.path.join(data_dir, 'sweep')
  rc = sweep.main(mini_ablation.sweep_argv(args, work, train, valid) + ['--export_only'])
  if rc != 0:
    return rc
  os.replace(os.path.join(work, 'exports'), os.path.join(data_dir, 'exports'))
  shutil.rmtree(work)
  os.remove(train)
  with open(os.path.join(data_dir, PREPARED), 'w') as f:
    json.dump({k: getattr(args, k) for k in ('gin_file', 'train_steps', 'seeds', 'vocab_size',
                                             'eval_windows', 'gin')} |
              {'text': os.path.abspath(args.text) if args.text else f'sword:{demo.SWORD_MODULE}',
               'prepared_s': round(time.time() - t0, 1)},
              f, indent=1)
  print(f'[clone_suite] prepared {data_dir} in {time.time() - t0:.0f} s')
  return 0


def _compiles(sweep_dir: str, runs) -> dict:
  """{run: [{'compile_s', 'from_cache'}, ...]}: each training segment's compile of the train step,
  from its train.log (runs after the first load it from the sweep's compilation cache)."""
  out = {}
  for name in runs:
    try:
      with open(os.path.join(sweep_dir, name, 'train.log'), errors='replace') as f:
        found = _COMPILED.findall(f.read())
    except OSError:
      found = []
    out[name] = [{'compile_s': float(secs), 'from_cache': bool(cached)} for secs, cached in found]
  return out


def _summary(sweep_dir: str, prepared: dict, wall_s: float) -> dict:
  with open(os.path.join(sweep_dir, 'report.json')) as f:
    report = json.load(f)
  rec = {'gin_file': prepared['gin_file'], 'train_steps': prepared['train_steps'],
         'vocab_size': prepared['vocab_size'], 'gin_overrides': prepared['gin'],
         'wall_s': round(wall_s, 1), 'runs': report['runs'],
         'plots': report['plots'], 'report': os.path.join(sweep_dir, 'report.md'),
         'train_step_compiles': _compiles(sweep_dir, report['runs'])}
  # Asked only now, after the sweep: its training processes had the accelerator to themselves.
  rec['device'] = f'{jax.device_count()} x {jax.devices()[0].device_kind}'
  rec['jax_version'] = jax.__version__
  rec['commit'] = provenance.source_commit()
  rec['time'] = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())
  return rec


def run(args) -> int:
  data_dir = os.path.abspath(args.data_dir)
  path = os.path.join(data_dir, PREPARED)
  if not os.path.exists(path):
    print(f'error: {path} missing: prepare DATA_DIR first (python -m launch.clone_suite prepare, '
          'or bash scripts/gpu_bundle.sh)', file=sys.stderr)
    return 2
  with open(path) as f:
    prepared = json.load(f)
  out = os.path.abspath(args.out_dir)
  os.makedirs(out, exist_ok=True)
  exports = os.path.join(out, 'exports')
  if not os.path.lexists(exports):
    os.symlink(os.path.join(data_dir, 'exports'), exports)
  ns = argparse.Namespace(**{k: prepared[k] for k in ('gin_file', 'train_steps', 'seeds',
                                                      'vocab_size', 'eval_windows', 'gin')},
                          jobs=args.jobs, export=True)
  valid = os.path.join(data_dir, 'data', 'valid.txt')
  # TRAIN_FILES is only read by the task builders, which a run from its export leaves unread.
  t0 = time.time()
  rc = sweep.main(mini_ablation.sweep_argv(ns, out, valid, valid))
  if not os.path.exists(os.path.join(out, 'report.json')):
    print(f'error: the sweep in {out} wrote no report.json (exit {rc}; see <run>/train.log)',
          file=sys.stderr)
    return rc or 1
  rec = _summary(out, prepared, time.time() - t0)
  if args.record:
    with open(args.record, 'w') as f:
      json.dump(rec, f, indent=1)
  if args.markdown:
    with open(os.path.join(out, 'report.md')) as f:
      head = f.read().split('\n## Per run')[0]
    head = head.split('\n', 1)[1] if head.startswith('# ') else head  # SUMMARY.md has the title
    with open(args.markdown, 'w') as f:
      compiles = ', '.join(
          f'{name} ' + ' + '.join(f'{c["compile_s"]:g} s' + (' (cache)' if c['from_cache'] else '')
                                  for c in segs)
          for name, segs in rec['train_step_compiles'].items() if segs)
      f.write(f'## (c) cloned-language ablation ({prepared["gin_file"]}, {prepared["train_steps"]} '
              f'steps, {rec["device"]}, {rec["wall_s"]:.0f} s)\n\n{head.strip()}\n\n'
              f'Train step compile per run: {compiles or "n/a"}.\n\nFull report: {rec["report"]}\n')
  return rc


def main(argv: Optional[Sequence[str]] = None) -> int:
  p = argparse.ArgumentParser(prog='python -m launch.clone_suite', description=__doc__.split('\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest='cmd', required=True)
  pp = sub.add_parser('prepare')
  pp.add_argument('data_dir')
  pp.add_argument('--text', help='text file, one verse or sentence a line (default: the World English '
                  'Bible from the apt package sword-text-web)')
  pp.add_argument('--gin_file', default='gin_configs/experiments/clone_ablation_gpu.gin')
  pp.add_argument('--train_steps', type=int, default=1000)
  pp.add_argument('--seeds', default='0')
  pp.add_argument('--vocab_size', type=int, default=8000)
  pp.add_argument('--eval_windows', type=int, default=256)
  pp.add_argument('--gin', action='append', default=[], metavar='NAME=VALUE',
                  help='gin override for every run (repeatable), e.g. NUM_LAYERS=2')
  pr = sub.add_parser('run')
  pr.add_argument('data_dir')
  pr.add_argument('out_dir')
  pr.add_argument('--jobs', type=int, default=1,
                  help='runs trained at a time (1 on one accelerator; the CPU smoke test uses 3)')
  pr.add_argument('--record', help='JSON record of the step')
  pr.add_argument('--markdown', help='markdown summary of the step')
  args = p.parse_args(argv)
  if args.cmd == 'prepare':
    args.jobs, args.export = 1, True
    return prepare(args)
  return run(args)


if __name__ == '__main__':
  sys.stdout.reconfigure(line_buffering=True)  # (to a log file too, each line as printed)
  sys.exit(main())
