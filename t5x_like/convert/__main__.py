"""`python -m t5x_like.convert {to-hf,from-hf} ...`: bad input ends with one `error: ...` line, status 2."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from t5x_like.convert import from_hf, to_hf
from t5x_like.convert.mapping import ConversionError

os.environ.setdefault('HF_HUB_OFFLINE', '1')  # never download: everything is read from local dirs
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def make_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m t5x_like.convert',
                              description='Convert checkpoints to and from Hugging Face transformers.')
  sub = p.add_subparsers(dest='command', required=True)
  e = sub.add_parser('to-hf', help='export a run (model dir) to a transformers directory')
  e.add_argument('--model_dir', required=True, help='a model dir written by t5x_like.train')
  e.add_argument('--step', type=int, help='checkpoint step (default: the latest)')
  e.add_argument('--out', required=True, help='output directory (from_pretrained loads it)')
  e.add_argument('--dtype', choices=['float32', 'bfloat16', 'float16'],
                 help='weight dtype in the safetensors files (default: the run\'s param_dtype)')
  e.add_argument('--hf_arch', choices=['t5', 'mt5'], default='t5',
                 help='encoder-decoders: T5ForConditionalGeneration or MT5ForConditionalGeneration')
  e.add_argument('--max_shard_size', default='5GB',
                 help='split the weights into files of at most this size (e.g. 5GB, 500MB)')
  i = sub.add_parser('from-hf', help='import a transformers checkpoint as a model dir to train on')
  i.add_argument('--hf', required=True, help='a directory written by save_pretrained')
  i.add_argument('--out', required=True, help='the model dir to create')
  i.add_argument('--param_dtype', default='float32', choices=['float32', 'bfloat16'],
                 help='dtype of the imported parameters (training keeps float32 masters)')
  i.add_argument('--dtype', default=None, choices=['float32', 'bfloat16'],
                 help='compute dtype bound in the model config (default: the config default)')
  i.add_argument('--no_scan_layers', action='store_true', help='unrolled layers_{i} instead of scanned')
  p.add_argument('--traceback', action='store_true', help='show full tracebacks for errors')
  return p


def parse_size(s: str) -> int:
  units = {'KB': 10 ** 3, 'MB': 10 ** 6, 'GB': 10 ** 9, 'KIB': 2 ** 10, 'MIB': 2 ** 20, 'GIB': 2 ** 30}
  t = s.strip().upper()
  for u, m in sorted(units.items(), key=lambda kv: -len(kv[0])):
    if t.endswith(u):
      return int(float(t[:-len(u)]) * m)
  return int(t)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = make_parser().parse_args(argv)
  try:
    if args.command == 'to-hf':
      to_hf.export(args.model_dir, args.out, step=args.step, dtype=args.dtype, hf_arch=args.hf_arch,
                   max_shard_bytes=parse_size(args.max_shard_size))
    else:
      overrides = {'scan_layers': not args.no_scan_layers}
      if args.dtype:
        overrides['dtype'] = args.dtype
      from_hf.import_hf(args.hf, args.out, param_dtype=args.param_dtype, **overrides)
  except (ConversionError, FileNotFoundError, ValueError) as e:
    if args.traceback:
      raise
    print(f'error: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}',
          file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
