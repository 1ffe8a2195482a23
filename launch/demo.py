"""The README's first command, on CPU, on the public-domain World English Bible:

    python -m launch.demo                     # the mini cloned-language ablation (default)
    python -m launch.demo --mode single       # one small decoder pretraining run
    python -m launch.demo --text_files my.txt # your own text instead of the Bible

ablation: 50/50 vs 90/10 English/clone vs the data-matched monolingual baseline, a 4-layer 64-wide
decoder, 800 steps each, then evaluation and runs/demo_ablation/report.md with its plots
(launch/mini_ablation.py). single: gin_configs/examples/bible_demo.gin for --steps steps in
runs/demo. Without --text_files the Bible comes from the Debian/Ubuntu package `sword-text-web`
(installed with apt-get when run as root) and is written to demo_data/, one verse a line.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

from launch import mini_ablation
from t5x_like import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(REPO, 'demo_data')
SWORD_MODULE = 'engWEB2015eb'
NO_SWORD = ('cannot install the World English Bible (Debian/Ubuntu package sword-text-web): {why}. '
            'Install it yourself (sudo apt-get install sword-text-web) or train on your own text with '
            '--text_files FILE [FILE ...] (one example a line)')


def ensure_sword_bible() -> None:
  ztext = '/usr/share/sword/modules/texts/ztext'
  if os.path.isdir(ztext) and SWORD_MODULE.lower() in (d.lower() for d in os.listdir(ztext)):
    return
  if not shutil.which('apt-get'):
    raise SystemExit('error: ' + NO_SWORD.format(why='no apt-get on this machine'))
  if os.geteuid() != 0:
    raise SystemExit('error: ' + NO_SWORD.format(why='not root'))
  print('installing sword-text-web with apt-get ...', flush=True)
  for cmd in (['apt-get', 'update', '-qq'], ['apt-get', 'install', '-y', '-qq', 'sword-text-web']):
    r = subprocess.run(cmd, capture_output=True, text=True,
                       env=dict(os.environ, DEBIAN_FRONTEND='noninteractive'))
    if r.returncode:
      last = (r.stderr.strip().splitlines() or ['?'])[-1]
      raise SystemExit('error: ' + NO_SWORD.format(why=f'{" ".join(cmd)} failed: {last}'))


def export_bible(all_path: str, train_path: str, valid_path: str, every: int = 50) -> None:
  """One verse a line (all verses; and a split with every 50th verse held out for validation)."""
  from tasks import sources
  print(f'exporting {SWORD_MODULE} to {DATA_DIR} (pysword) ...', flush=True)
  verses = [text for _, text in sources.read_sword_bible(SWORD_MODULE)]
  os.makedirs(DATA_DIR, exist_ok=True)
  with open(train_path + '.tmp', 'w') as tr, open(valid_path + '.tmp', 'w') as va, \
      open(all_path + '.tmp', 'w') as al:
    for i, v in enumerate(verses):
      (va if i % every == every - 1 else tr).write(v + '\n')
      al.write(v + '\n')
  os.replace(valid_path + '.tmp', valid_path)
  os.replace(train_path + '.tmp', train_path)
  os.replace(all_path + '.tmp', all_path)  # last: its presence means the export is complete
  print(f'{len(verses)} verses', flush=True)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog='python -m launch.demo', description=__doc__.split('\n')[0])
  p.add_argument('--mode', choices=('ablation', 'single'), default='ablation')
  p.add_argument('--text_files', nargs='+', help='your own text, one example a line (skips the Bible)')
  p.add_argument('--validation_files', nargs='+', help='single mode: held-out text (default: the '
                 'Bible hold-out, or the first --text_files file)')
  p.add_argument('--out', help='default: runs/demo_ablation (ablation) or runs/demo (single)')
  p.add_argument('--steps', type=int, help='train steps per run (default 800 ablation, 400 single)')
  args = p.parse_args(argv)
  all_path = os.path.join(DATA_DIR, 'web_bible.txt')
  train_path = os.path.join(DATA_DIR, 'web_bible.train.txt')
  valid_path = os.path.join(DATA_DIR, 'web_bible.validation.txt')
  if not args.text_files and not os.path.exists(all_path):
    ensure_sword_bible()
    export_bible(all_path, train_path, valid_path)
  if args.mode == 'ablation':
    out = args.out or os.path.join(REPO, 'runs', 'demo_ablation')
    text = args.text_files[0] if args.text_files else all_path
    # Eight checkpoints a run, whatever its length (800 steps: the config's 100): the report's
    # perplexity curves and the token-efficiency fit need several.
    every = ([] if args.steps is None else
             ['--gin', f'TrainerConfig.checkpoint_every={max(args.steps // 8, 1)}'])
    code = mini_ablation.main([text, out, '--train_steps', str(args.steps or 800), *every])
    if code == 0:
      print(f'\nreport: {out}/report.md (plots beside it) | TensorBoard: tensorboard --logdir {out} | '
            f'checkpoints: {out}/<run>/checkpoints', flush=True)
    return code
  if args.text_files:
    train_files = args.text_files
    valid_files = args.validation_files or args.text_files[:1]
  else:
    train_files, valid_files = [train_path], args.validation_files or [valid_path]
  return train.main([
      '--gin_file=gin_configs/examples/bible_demo.gin',
      f'--gin.MODEL_DIR={(args.out or os.path.join(REPO, "runs", "demo"))!r}',
      f'--gin.TRAIN_STEPS={args.steps or 400}',
      f'--gin.TRAIN_FILES={train_files!r}', f'--gin.VALIDATION_FILES={valid_files!r}'])


if __name__ == '__main__':
  sys.stdout.reconfigure(line_buffering=True)  # (to a log file too, each line as printed)
  sys.exit(main())
