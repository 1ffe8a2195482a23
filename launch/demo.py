"""The README's first command: pretrain a tiny decoder on the World English Bible, on CPU.

    python -m launch.demo [--text_files A.txt B.txt] [--model_dir runs/demo] [--steps 400]

Without --text_files it reads the public-domain World English Bible from the Debian/Ubuntu package
`sword-text-web` (installing it with apt-get when run as root), writes one verse per line to
demo_data/, and trains with gin_configs/examples/bible_demo.gin.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

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


def export_bible(train_path: str, valid_path: str, every: int = 50) -> None:
  """One verse a line; every 50th verse is held out for validation."""
  from tasks import sources
  print(f'exporting {SWORD_MODULE} to {DATA_DIR} (pysword; about a minute) ...', flush=True)
  verses = [text for _, text in sources.read_sword_bible(SWORD_MODULE)]
  os.makedirs(DATA_DIR, exist_ok=True)
  with open(train_path + '.tmp', 'w') as tr, open(valid_path + '.tmp', 'w') as va:
    for i, v in enumerate(verses):
      (va if i % every == every - 1 else tr).write(v + '\n')
  os.replace(valid_path + '.tmp', valid_path)
  os.replace(train_path + '.tmp', train_path)  # last: its presence means the export is complete
  print(f'{len(verses)} verses', flush=True)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog='python -m launch.demo', description=__doc__.split('\n')[0])
  p.add_argument('--text_files', nargs='+', help='your own text, one example a line (skips the Bible)')
  p.add_argument('--validation_files', nargs='+', help='held-out text (default: the Bible hold-out, '
                 'or the first --text_files file)')
  p.add_argument('--model_dir', default=os.path.join(REPO, 'runs', 'demo'))
  p.add_argument('--steps', type=int, default=400)
  args = p.parse_args(argv)
  if args.text_files:
    train_files = args.text_files
    valid_files = args.validation_files or args.text_files[:1]
  else:
    train_path = os.path.join(DATA_DIR, 'web_bible.train.txt')
    valid_path = os.path.join(DATA_DIR, 'web_bible.validation.txt')
    if not os.path.exists(train_path):
      ensure_sword_bible()
      export_bible(train_path, valid_path)
    train_files, valid_files = [train_path], args.validation_files or [valid_path]
  from t5x_like import train
  return train.main([
      '--gin_file=gin_configs/examples/bible_demo.gin',
      f'--gin.MODEL_DIR={args.model_dir!r}', f'--gin.TRAIN_STEPS={args.steps}',
      f'--gin.TRAIN_FILES={train_files!r}', f'--gin.VALIDATION_FILES={valid_files!r}'])


if __name__ == '__main__':
  sys.exit(main())
