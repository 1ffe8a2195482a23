"""Command line for the data pipelines.

  python -m tasks show NAME [--n N] [--split SPLIT] [--gin_file F --gin.X=Y ...]
      Prints examples of a task or mixture as JSON lines: per feature the token ids and the
      decoded text (after the task's preprocessing, before the feature converter). Tasks built by
      a gin file exist once the file is parsed, so pass the experiment's --gin_file.
  python -m tasks vocab --output PREFIX --vocab_size N [--extra_ids E] [--symbols '<en>,<de>']
                        SOURCE [SOURCE ...]
      Trains a SentencePiece vocabulary (T5 ids: pad 0, eos 1, unk 2) on any source:
      text files, tsv:FILE, ces:BIBLE.xml, sword:MODULE, tfds:NAME:SPLIT:KEY.
  python -m tasks cache --gin_file F --output_cache_dir DIR [--tasks NAME ...]
                        [--pipeline_options=--runner=DirectRunner,...]
      Preprocesses the tasks up to their CacheDatasetPlaceholder with Apache Beam (see
      docs/DATA.md for Dataflow / Flink / Spark); train with DataConfig.use_cached = True.
  python -m tasks export --gin_file F --output DIR [--scopes train eval]
                         [--steps N | --num_examples N] [--epoch] [--examples_per_shard K]
      Writes the gin file's train (and eval) data after feature conversion and packing to
      ArrayRecord shards + meta.json in DIR/<split>/ (tasks/export.py); train from it without
      TensorFlow with DataConfig.export_dir = DIR (docs/DATA.md). The infinite train stream is
      exported for --steps x batch size examples (default: TRAIN_STEPS); --epoch writes one
      unshuffled pass instead, which the reader then shuffles by seed per epoch.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
from typing import Optional, Sequence

import gin
import numpy as np
import seqio

from t5x_like import models
from t5x_like import train as train_lib
from t5x_like.data import DataConfig
from tasks import beam_cache, export, sources, vocab


def register_from_gin(gin_files: Sequence[str], bindings: Sequence[str],
                      config_text: Optional[str] = None) -> tuple[dict, list[str]]:
  """Parses gin like the trainer and builds the train/eval DataConfigs, which registers the tasks
  their builders make. Returns ({scope: DataConfig} for the scopes the gin configures, the one-line
  errors of the others). `config_text` (a parsed config, from gin.config_str()) replaces the files:
  remote Beam workers get it this way, with no access to the gin files."""
  if config_text is not None:
    gin.clear_config()
    gin.parse_config(config_text)
  else:
    train_lib.parse_gin(gin_files, bindings, [])
  configs, errors = {}, []
  for scope in ('train', 'eval'):
    try:
      with gin.config_scope(scope):
        configs[scope] = DataConfig()
    except (TypeError, ValueError, RuntimeError, OSError) as e:
      # A file may configure only one of them; the error is shown if NAME is then not found.
      errors.append(f'{scope}/DataConfig: {train_lib._one_line(e)}')  # pylint: disable=protected-access
  return configs, errors


def _jsonable(value, vocabulary):
  value = np.asarray(value)
  if value.dtype.kind in 'SO':
    return value.tolist() if value.ndim else value.item().decode('utf-8', 'replace')
  if value.ndim == 1 and vocabulary is not None and value.dtype.kind in 'iu':
    return {'ids': value.tolist(), 'text': vocabulary.decode(value.tolist())}
  return value.tolist()


def show(args, gin_bindings) -> int:
  configs, errors = (register_from_gin(args.gin_file, gin_bindings) if args.gin_file or gin_bindings
                     else ({}, []))
  try:
    provider = seqio.get_mixture_or_task(args.name)
  except ValueError:
    names = sorted(seqio.TaskRegistry.names()) + sorted(seqio.MixtureRegistry.names())
    why = '; '.join(errors)
    known = (f'registered: {", ".join(names)}' if names else
             'none is registered: tasks exist once the gin file that builds them is parsed, so pass '
             "the experiment's --gin_file")
    raise ValueError(f'no task or mixture named {args.name!r} ({known})'
                     + (f'; building the gin file\'s data failed: {why}' if why else '')) from None
  cfg = configs.get('train')
  lengths = dict(cfg.task_feature_lengths) if cfg is not None else None
  ds = provider.get_dataset(sequence_length=lengths, split=args.split, shuffle=args.shuffle,
                            seed=args.seed, num_epochs=1)
  vocabs = {k: f.vocabulary for k, f in provider.output_features.items()}
  for i, ex in enumerate(ds.take(args.n).as_numpy_iterator()):
    row = {'index': i}
    for k, v in ex.items():
      row[k] = _jsonable(v, vocabs.get(k))
    print(json.dumps(row, ensure_ascii=False))
  return 0


def vocab_cmd(args) -> int:
  texts = itertools.chain.from_iterable(sources.iter_texts(s) for s in args.sources)
  path = vocab.train_sentencepiece(
      [], args.output, args.vocab_size, model_type=args.model_type,
      user_defined_symbols=[s for s in args.symbols.split(',') if s],
      sentence_iterator=iter(texts))
  v = seqio.SentencePieceVocabulary(path, extra_ids=args.extra_ids)
  print(json.dumps({'model': path, 'vocab_size': v.vocab_size, 'extra_ids': args.extra_ids}))
  return 0


def cache_cmd(args, gin_bindings) -> int:
  configs, _ = register_from_gin(args.gin_file, gin_bindings)
  names = args.tasks or [c.name for c in configs.values()]
  task_names = []
  for n in names:
    p = seqio.get_mixture_or_task(n)
    task_names += [t.name for t in p.tasks] if isinstance(p, seqio.Mixture) else [p.name]
  out = beam_cache.cache_tasks(sorted(set(task_names)), args.output_cache_dir,
                               config_text=gin.config_str(),
                               pipeline_options=args.pipeline_options, min_shards=args.min_shards)
  print(json.dumps({'cached': out}))
  return 0


def _model_family(override: Optional[str]) -> str:
  if override:
    return override
  try:
    selector = gin.query_parameter('train.model').selector
  except ValueError:
    raise ValueError('the gin file binds no train.model: pass --family decoder|encdec') from None
  return getattr(models, selector.split('.')[-1]).family


def _binds(name: str) -> bool:
  try:
    return gin.query_parameter(name) is not None
  except ValueError:
    return False


def export_cmd(args, gin_bindings, argv) -> int:
  for flag in ('steps', 'num_examples', 'examples_per_shard'):
    value = getattr(args, flag)
    if value is not None and value < 1:
      raise ValueError(f'--{flag} {value}: expected at least 1')
  configs, errors = register_from_gin(args.gin_file, gin_bindings)
  family = _model_family(args.family)
  out = {}
  for scope in args.scopes or ['train'] + (['eval'] if _binds('train.eval_data') else []):
    if scope not in configs:
      why = ('; '.join(e for e in errors if e.startswith(scope)) or
             f'not configured by the gin file (it configures: {", ".join(sorted(configs)) or "none"})')
      raise ValueError(f'--scopes {scope}: {why}')
    cfg = configs[scope]
    num = None
    if args.epoch and cfg.num_epochs is None:
      cfg = dataclasses.replace(cfg, num_epochs=1, shuffle=False)
    elif cfg.num_epochs is None:
      steps = args.steps
      if steps is None and args.num_examples is None:
        try:  # the run's own length, as the trainer reads it
          steps = int(gin.query_parameter('%TRAIN_STEPS'))
        except (ValueError, TypeError):
          steps = None
      num = args.num_examples or (steps * cfg.batch_size if steps else None)
    meta = export.export_split(cfg, family, args.output, num_examples=num,
                               examples_per_shard=args.examples_per_shard,
                               command='python -m tasks ' + ' '.join(argv))
    out[scope] = {k: meta[k] for k in ('name', 'split', 'mode', 'num_examples', 'content_sha256')}
  print(json.dumps({'export_dir': args.output, 'splits': out}))
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  cli_bindings, rest = train_lib.split_gin_flags(argv)
  p = argparse.ArgumentParser(prog='python -m tasks', description=__doc__.split('\n')[0])
  sub = p.add_subparsers(dest='cmd', required=True)
  s = sub.add_parser('show', help='print examples of a task or mixture as JSON lines')
  s.add_argument('name')
  s.add_argument('--n', type=int, default=5)
  s.add_argument('--split', default='train')
  s.add_argument('--shuffle', action='store_true')
  s.add_argument('--seed', type=int, default=0)
  v = sub.add_parser('vocab', help='train a SentencePiece vocabulary')
  v.add_argument('sources', nargs='+')
  v.add_argument('--output', required=True, help='model prefix: writes PREFIX.model/.vocab')
  v.add_argument('--vocab_size', type=int, default=8000)
  v.add_argument('--model_type', default='unigram')
  v.add_argument('--extra_ids', type=int, default=0)
  v.add_argument('--symbols', default='', help="comma-separated pieces kept whole, e.g. '<en>,<de>'")
  c = sub.add_parser('cache', help='cache tasks with Apache Beam')
  c.add_argument('--output_cache_dir', required=True)
  c.add_argument('--tasks', nargs='*')
  c.add_argument('--min_shards', type=int, default=1)
  c.add_argument('--pipeline_options', default='--runner=DirectRunner')
  e = sub.add_parser('export', help='write converted, packed examples to ArrayRecord (no TF to read)')
  e.add_argument('--output', required=True, help='export dir: DIR/<split>/ and DIR/vocabulary/')
  e.add_argument('--scopes', nargs='+',
                 help='which gin DataConfigs to export: train, eval (default: those train() reads)')
  e.add_argument('--steps', type=int, help='train stream: export steps x batch size examples')
  e.add_argument('--num_examples', type=int, help='train stream: export this many examples')
  e.add_argument('--epoch', action='store_true', help='train split: one unshuffled pass instead')
  e.add_argument('--examples_per_shard', type=int, default=8192)
  e.add_argument('--family', choices=['decoder', 'encdec'],
                 help="the model's feature converter (default: from the gin file's train.model)")
  for q in (s, c, e):
    q.add_argument('--gin_file', action='append', default=[])
    q.add_argument('--gin_bindings', action='append', default=[])
  args = p.parse_args(rest)
  try:
    if args.cmd == 'show':
      return show(args, args.gin_bindings + cli_bindings)
    if args.cmd == 'vocab':
      return vocab_cmd(args)
    if args.cmd == 'export':
      return export_cmd(args, args.gin_bindings + cli_bindings, argv)
    return cache_cmd(args, args.gin_bindings + cli_bindings)
  except (ValueError, TypeError, KeyError, OSError) as e:
    msg = str(e).strip().splitlines()
    print(f'error: {msg[0] if msg else type(e).__name__}', file=sys.stderr)
    return 2


if __name__ == '__main__':
  sys.stdout.reconfigure(line_buffering=True)  # (to a log file too, each line as printed)
  sys.exit(main())
