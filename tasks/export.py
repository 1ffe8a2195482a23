"""`python -m tasks export`: a task's or mixture's examples after feature conversion and packing --
exactly the arrays the model consumes -- as ArrayRecord shards + meta.json, for the TF-free input
path (t5x_like/data_grain.py, whose docstring is the format's reference).

The seqio pipeline runs as the trainer runs it on one host (same DataConfig, converter, packing,
seed). A training split is an infinite stream: its first `num_examples` are written in order
('stream' mode), so stage schedules and mixture rates are kept exactly (the mixed stream is exported,
not each task plus its rates: a schedule decides per window index, which only the mixed stream
knows). A finite split (num_epochs set, e.g. eval) is written whole ('epoch' mode).
"""
from __future__ import annotations

import filecmp
import hashlib
import json
import os
import tempfile
from typing import Optional

import numpy as np
from array_record.python import array_record_module

from t5x_like import data_grain, data_seqio
from t5x_like import vocabulary as vocabulary_lib


def _spec(element_spec) -> list[dict]:
  return [{'name': k, 'shape': [int(d) for d in element_spec[k].shape],
           'dtype': np.dtype(element_spec[k].dtype.as_numpy_dtype).name}
          for k in sorted(element_spec)]


def _write_vocabulary(vocab, vocab_dir: str) -> None:
  """OUTPUT/vocabulary/, shared by the splits: a second split must have the same one."""
  if not os.path.exists(os.path.join(vocab_dir, 'spm.model')):
    vocabulary_lib.save_vocabulary(vocab, vocab_dir)
    return
  with tempfile.TemporaryDirectory() as tmp:
    vocabulary_lib.save_vocabulary(vocab, tmp)
    if not filecmp.cmp(os.path.join(tmp, 'spm.model'), os.path.join(vocab_dir, 'spm.model'),
                       shallow=False):
      raise ValueError(f'{vocab_dir} holds another vocabulary than this config\'s: export each '
                       'vocabulary to its own --output')


def export_split(cfg, family: str, output: str, *, num_examples: Optional[int] = None,
                 examples_per_shard: int = 8192, command: str = '') -> dict:
  """Writes OUTPUT/<cfg.split>/ (shards + meta.json) and OUTPUT/vocabulary/; returns the meta."""
  mode = 'stream' if cfg.num_epochs is None else 'epoch'
  if mode == 'stream' and not num_examples:
    raise ValueError(f'the {cfg.split} split repeats forever (DataConfig.num_epochs=None): say how '
                     'much to export with --steps or --num_examples')
  out = os.path.join(output, cfg.split)
  if os.path.exists(os.path.join(out, data_grain.META)):
    raise FileExistsError(f'{out} already holds an export; remove it or choose another --output')
  os.makedirs(out, exist_ok=True)
  vocab_dir = os.path.join(output, data_grain.VOCABULARY)
  _write_vocabulary(data_seqio.vocabulary(cfg), vocab_dir)
  with open(os.path.join(vocab_dir, 'vocabulary.json')) as f:
    vocab_meta = json.load(f)

  ds = data_seqio.converted_dataset(cfg, family, 0, 1)
  if mode == 'stream':
    ds = ds.take(num_examples)
  spec_json = _spec(ds.element_spec)
  spec = data_grain.features({'features': spec_json})
  content = hashlib.sha256(json.dumps(spec_json, sort_keys=True).encode())
  shards, tmp_paths = [], []
  writer, count, in_shard = None, 0, 0
  for ex in ds.as_numpy_iterator():
    if writer is None:
      tmp_paths.append(os.path.join(out, f'part-{len(tmp_paths):05d}.tmp'))
      writer = array_record_module.ArrayRecordWriter(tmp_paths[-1], 'group_size:1')
    record = data_grain.encode(ex, spec)
    content.update(record)
    writer.write(record)
    count, in_shard = count + 1, in_shard + 1
    if in_shard == examples_per_shard:
      writer.close()
      shards.append(in_shard)
      writer, in_shard = None, 0
  if writer is not None:
    writer.close()
    shards.append(in_shard)
  if mode == 'stream' and count < num_examples:
    raise ValueError(f'the stream of {cfg.name} ended after {count} of {num_examples} examples')
  if count == 0:
    raise ValueError(f'{cfg.name} ({cfg.split}) gave no examples')
  files = []
  for i, (tmp, n) in enumerate(zip(tmp_paths, shards)):
    name = data_grain.shard_name(i, len(shards))
    os.replace(tmp, os.path.join(out, name))
    files.append({'file': name, 'num_records': n, 'bytes': os.path.getsize(os.path.join(out, name))})
  meta = {
      'format': data_grain.FORMAT, 'name': cfg.name, 'split': cfg.split, 'family': family,
      'mode': mode, 'task_feature_lengths': {k: int(v) for k, v in
                                             dict(cfg.task_feature_lengths).items()},
      'pack': bool(cfg.pack), 'shuffle': bool(cfg.shuffle), 'seed': cfg.seed,
      'num_epochs': cfg.num_epochs, 'num_examples': count, 'features': spec_json,
      'record_bytes': sum(int(np.prod(s)) * d.itemsize for _, s, d in spec), 'shards': files,
      'vocabulary': {'dir': data_grain.VOCABULARY, 'type': vocab_meta['type'],
                     'vocab_size': int(vocab_meta['vocab_size']),
                     'extra_ids': vocab_meta.get('extra_ids'),
                     'spm_sha256': data_grain.vocabulary_sha256(output)},
      'content_sha256': content.hexdigest(), 'command': command,
  }
  with open(os.path.join(out, data_grain.META + '.tmp'), 'w') as f:
    json.dump(meta, f, indent=1)
  os.replace(os.path.join(out, data_grain.META + '.tmp'), os.path.join(out, data_grain.META))
  return meta
