"""The mini cloned-language ablation, end to end: data -> sweep -> eval -> report.

    python -m launch.mini_ablation VERSES.txt OUT_DIR [--train_steps 800] [--seeds 0] [--jobs 2]

VERSES.txt: English text, one verse (or sentence) a line -- the demo exports the World English Bible.
Every 50th line is held out for evaluation (spread over the whole book, never trained on); the rest is
the training text. Three runs of gin_configs/experiments/clone_ablation_cpu.gin (a 4-layer, 64-wide
decoder, batch 16 x 128 tokens): 50/50 (p_clone 0.5), 90/10 (p_clone 0.1), and the data-matched
monolingual baseline (p_clone 0: the same steps and tokens, all in the original language, which is
also what the token-efficiency fit uses). Then every run is evaluated (perplexity of both languages at
every checkpoint; alignment, gradient alignment and MEXA on held-out verses, each with its controls) and
OUT_DIR/report.md is written with its plots. Re-running resumes where it stopped.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional, Sequence

from launch import sweep
from t5x_like import exit_codes

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_FILE = 'gin_configs/experiments/clone_ablation_cpu.gin'


def split_text(src: str, data_dir: str, every: int = 50, max_valid: int = 800) -> tuple[str, str]:
  """train.txt / valid.txt from a line-per-example file: every `every`-th line held out."""
  with open(src, encoding='utf-8') as f:
    lines = [' '.join(l.split()) for l in f]
  lines = [l for l in lines if l]
  if len(lines) < 10 * every:
    raise ValueError(f'{src} has {len(lines)} non-empty lines; the mini ablation wants thousands')
  valid = [l for i, l in enumerate(lines) if i % every == every - 1][:max_valid]
  held = set(i for i in range(every - 1, len(lines), every)[:max_valid])
  train = [l for i, l in enumerate(lines) if i not in held]
  os.makedirs(data_dir, exist_ok=True)
  paths = os.path.join(data_dir, 'train.txt'), os.path.join(data_dir, 'valid.txt')
  for path, part in zip(paths, (train, valid)):
    if not os.path.exists(path):  # re-runs keep the vocabulary cache key (file mtime) stable
      with open(path + '.tmp', 'w', encoding='utf-8') as f:
        f.write('\n'.join(part) + '\n')
      os.replace(path + '.tmp', path)
  return paths


def sweep_argv(args, out: str, train: str, valid: str) -> list[str]:
  """launch.sweep's command line for the three runs (also scripts/gpu_suite.sh's step (c))."""
  return [
      out, f'--gin_file={args.gin_file}', f'--train_steps={args.train_steps}',
      '--grid', 'p_clone=0.5,0.1', '--grid', f'seed={args.seeds}', '--add', 'p_clone=0.0',
      f'--jobs={args.jobs}', '--eval', '--report',
      # MEXA on held-out verses: on every machine the same text (FLORES is not on a fresh one).
      f'--eval_flags=--mexa_pivot {valid} --max_windows {args.eval_windows} '
      f'--align_windows {min(args.eval_windows // 2, 64) if args.eval_windows < 256 else 128}',
      f"--gin.TRAIN_FILES=['{train}']", f"--gin.VALIDATION_FILES=['{valid}']",
      f'--gin.VOCAB_SIZE={args.vocab_size}', f'--gin.MODEL_VOCAB_SIZE={2 * args.vocab_size}',
  ] + [f'--gin.{g}' for g in args.gin] + (['--export'] if args.export else [])


def main(argv: Optional[Sequence[str]] = None) -> int:
  p = argparse.ArgumentParser(prog='python -m launch.mini_ablation', description=__doc__.split('\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('verses', help='text file, one verse a line')
  p.add_argument('out_dir')
  p.add_argument('--train_steps', type=int, default=800)
  p.add_argument('--seeds', default='0', help='comma-separated seeds, e.g. 0,1')
  p.add_argument('--jobs', type=int, default=3,
                 help='runs at a time (default: all three; more jobs than cores are not pinned)')
  p.add_argument('--vocab_size', type=int, default=2000)
  p.add_argument('--gin_file', default=GIN_FILE,
                 help='experiment config (e.g. gin_configs/experiments/clone_ablation_gpu.gin)')
  p.add_argument('--eval_windows', type=int, default=128,
                 help='held-out windows for perplexity (half of them, at most 64, for alignment)')
  p.add_argument('--export', action='store_true',
                 help='export each run\'s data once and train from it without TensorFlow '
                      '(launch/sweep.py --export)')
  p.add_argument('--gin', action='append', default=[], metavar='NAME=VALUE',
                 help='extra gin override for every run (repeatable), e.g. NUM_LAYERS=2')
  args = p.parse_args(argv)
  t0 = time.time()
  out = os.path.abspath(args.out_dir)
  train, valid = split_text(args.verses, os.path.join(out, 'data'))
  print(f'[mini] data: {train} / {valid}', flush=True)

  # Train the shared vocabulary once, here: runs started side by side would otherwise race to write
  # the same cache entry.
  from tasks import vocab
  vocab.sentencepiece_vocabulary(train_files=[train], vocab_size=args.vocab_size)

  rc = sweep.main(sweep_argv(args, out, train, valid))
  if rc in (exit_codes.INTERRUPTED, exit_codes.PREEMPTED):  # (the sweep said where it stands)
    return rc
  report = os.path.join(out, 'report.md')
  if os.path.exists(report):
    with open(report) as f:
      text = f.read()
    # The summary table and the verdicts: what the reader came for.
    print(text.split('\n## Per run')[0])
  print(f'[mini] {"done" if rc == 0 else "finished with failures"} in {(time.time() - t0) / 60:.1f} '
        f'min; report: {report}', flush=True)
  return rc


if __name__ == '__main__':
  sys.stdout.reconfigure(line_buffering=True)  # (to a log file too, each line as printed)
  sys.exit(main())
