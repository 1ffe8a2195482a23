"""The TF-free input path: model-feature examples exported by `python -m tasks export` (ArrayRecord
shards + meta.json), read with Grain. Nothing here imports TensorFlow, seqio or the `tasks` package.

Format of EXPORT_DIR/<split>/ (FORMAT = 't5x_like.export/1'):
  meta.json            what the export is (see `read_meta`; written last, so a partial export has none)
  data-SSSSS-of-NNNNN.array_record
                       ArrayRecord shards (group_size:1, for random access). One record = one
                       example after feature conversion and packing: the arrays of meta['features'],
                       in that order, each C-ordered little-endian bytes of its dtype and shape,
                       concatenated (all records have meta['record_bytes'] bytes).
EXPORT_DIR/vocabulary/ spm.model + vocabulary.json (t5x_like/vocabulary.save_vocabulary's format).

Reading. meta['mode'] says what the records are:
  'stream'  the first num_examples of the trainer's (infinite, shuffled, possibly scheduled) seqio
            stream, in order. Read in that order, no reshuffle: global batch b is records
            [b*B, (b+1)*B), exactly the batches the seqio path gives one host, stage schedules and
            mixture rates included.
  'epoch'   one pass over a split (eval splits, or `export --epoch`). Shuffled globally by
            DataConfig.seed per epoch when DataConfig.shuffle, repeated DataConfig.num_epochs times.
Elastic by construction: host h of n reads rows [h*B/n, (h+1)*B/n) of each global batch, so the
position in the data is one integer, the next global batch, for any number of hosts. It is saved in
the checkpoint as JSON next to the model state, with the export's content hash.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Iterator, Optional

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from array_record.python import array_record_module

from t5x_like.host_batches import HostBatchIterator, PositionMismatch

FORMAT = 't5x_like.export/1'
META = 'meta.json'
VOCABULARY = 'vocabulary'


def split_dir(cfg) -> str:
  return os.path.join(cfg.export_dir, cfg.split)


def shard_name(i: int, n: int) -> str:
  return f'data-{i:05d}-of-{n:05d}.array_record'


def read_meta(path: str) -> dict:
  """EXPORT_DIR/<split>/meta.json, checked to be one this code can read."""
  meta_path = os.path.join(path, META)
  if not os.path.exists(meta_path):
    raise FileNotFoundError(f'DataConfig.export_dir: {meta_path} not found (write it with '
                            '`python -m tasks export --gin_file ... --output DIR`)')
  with open(meta_path) as f:
    meta = json.load(f)
  if meta.get('format') != FORMAT:
    raise ValueError(f'{meta_path}: format {meta.get("format")!r}, this code reads {FORMAT!r}')
  return meta


def export_name(cfg) -> str:
  return read_meta(split_dir(cfg))['name']


def features(meta: dict) -> list[tuple[str, tuple[int, ...], np.dtype]]:
  return [(f['name'], tuple(f['shape']), np.dtype(f['dtype']).newbyteorder('<'))
          for f in meta['features']]


def encode(example: dict[str, np.ndarray], spec) -> bytes:
  """One example -> one record (see the module docstring)."""
  parts = []
  for name, shape, dtype in spec:
    a = np.asarray(example[name])
    if a.shape != shape:
      raise ValueError(f'feature {name}: shape {a.shape}, expected {shape}')
    parts.append(np.ascontiguousarray(a, dtype=dtype).tobytes())
  return b''.join(parts)


class Decoder:
  """One record -> {feature: array}; a record of the wrong size names its shard."""

  def __init__(self, meta: dict, where: str):
    self.where = where
    self.spec = features(meta)
    self.offsets = []
    off = 0
    for name, shape, dtype in self.spec:
      n = int(np.prod(shape)) * dtype.itemsize
      self.offsets.append((name, off, shape, dtype))
      off += n
    self.record_bytes = off

  def __call__(self, record: bytes) -> dict[str, np.ndarray]:
    if len(record) != self.record_bytes:
      raise ValueError(f'{self.where}: a record of {len(record)} bytes, meta.json says '
                       f'{self.record_bytes}: the export is damaged')
    buf = memoryview(record)
    return {name: np.frombuffer(buf, dtype, int(np.prod(shape)), off).reshape(shape).astype(
        dtype.newbyteorder('='), copy=False) for name, off, shape, dtype in self.offsets}


def check_shards(path: str, meta: dict) -> list[str]:
  """Paths of the shards, each checked against meta.json (size, record count): a truncated or
  missing shard is an error naming the file, before anything is compiled."""
  paths = []
  for s in meta['shards']:
    p = os.path.join(path, s['file'])
    if not os.path.exists(p):
      raise FileNotFoundError(f'export shard {p} is missing')
    size = os.path.getsize(p)
    if size != s['bytes']:
      raise ValueError(f'export shard {p} is truncated or damaged: {size} bytes, meta.json says '
                       f'{s["bytes"]}')
    try:
      reader = array_record_module.ArrayRecordReader(p)
      n = reader.num_records()
      reader.close()
    except RuntimeError as e:
      raise ValueError(f'export shard {p} is damaged: {str(e).splitlines()[0][:200]}') from None
    if n != s['num_records']:
      raise ValueError(f'export shard {p} has {n} records, meta.json says {s["num_records"]}')
    paths.append(p)
  return paths


def check_meta(meta: dict, cfg, family: str, vocab_size: Optional[int], where: str) -> None:
  """One line naming the first mismatch between an export and the config that reads it."""
  want = {k: int(v) for k, v in dict(cfg.task_feature_lengths).items()}
  if meta['task_feature_lengths'] != want:
    raise ValueError(f'{where}: exported with feature lengths {meta["task_feature_lengths"]}, '
                     f'DataConfig.task_feature_lengths is {want}')
  if meta['family'] != family:
    raise ValueError(f'{where}: exported for a {meta["family"]} model (its feature converter), '
                     f'this model is {family}')
  if bool(meta['pack']) != bool(cfg.pack):
    raise ValueError(f'{where}: exported with pack={meta["pack"]}, DataConfig.pack={cfg.pack}')
  v = meta['vocabulary']['vocab_size']
  if vocab_size is not None and v > vocab_size:
    raise ValueError(f'{where}: the export\'s vocabulary has {v} ids, the model\'s vocab_size is '
                     f'{vocab_size}')


def vocabulary_sha256(export_dir: str) -> str:
  with open(os.path.join(export_dir, VOCABULARY, 'spm.model'), 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


def copy_vocabulary(cfg, directory: str) -> None:
  src = os.path.join(cfg.export_dir, VOCABULARY)
  meta = read_meta(split_dir(cfg))
  if vocabulary_sha256(cfg.export_dir) != meta['vocabulary']['spm_sha256']:
    raise ValueError(f'{src}/spm.model is not the vocabulary {split_dir(cfg)}/meta.json was '
                     'exported with (sha256 differs)')
  shutil.copytree(src, directory, dirs_exist_ok=True)


class ExportCheckpoint:
  """The data item of a checkpoint (see checkpointing.Checkpointer): the next global batch and the
  export's identity, as JSON. Independent of the number of hosts."""

  def __init__(self, iterator: 'ExportIterator'):
    self._it = iterator

  def state(self) -> dict:
    it = self._it
    return {'next_batch': it.next_batch, 'batch_size': it.global_batch,
            'content_sha256': it.meta['content_sha256'], 'export': it.path}

  def save_args(self) -> ocp.args.CheckpointArgs:
    return ocp.args.JsonSave(self.state())

  def restore_args(self) -> ocp.args.CheckpointArgs:
    return ocp.args.JsonRestore()

  def restored(self, value: dict) -> None:
    if not isinstance(value, dict) or 'content_sha256' not in value:
      raise PositionMismatch('its data state is not an export position (was it written by a run '
                             'reading a seqio task?)')
    mine = self.state()
    if value['content_sha256'] != mine['content_sha256']:
      raise PositionMismatch(
          f'it was written reading export {value["export"]} (content sha256 '
          f'{value["content_sha256"][:12]}), this run reads {mine["export"]} '
          f'({mine["content_sha256"][:12]})')
    if value['batch_size'] != mine['batch_size']:
      raise PositionMismatch(
          f'its data position was saved with global batch {value["batch_size"]}, this run has '
          f'{mine["batch_size"]}')
    self._it.seek(int(value['next_batch']))


class ExportIterator(HostBatchIterator):
  """This host's share of each global batch of an export -> global jax.Array batches."""

  def __init__(self, cfg, family: str, sharding, *, vocab_size: Optional[int] = None,
               num_batches: Optional[int] = None, read_threads: int = 2):
    self.cfg = cfg
    self.path = split_dir(cfg)
    self.meta = meta = read_meta(self.path)
    where = f'DataConfig.export_dir={cfg.export_dir!r} ({cfg.split})'
    check_meta(meta, cfg, family, vocab_size, where)
    self.global_batch = cfg.batch_size
    n_hosts, host = jax.process_count(), jax.process_index()
    if cfg.batch_size % n_hosts:
      raise ValueError(f'DataConfig.batch_size={cfg.batch_size} is not divisible by the '
                       f'{n_hosts} hosts')
    self.local_batch = cfg.batch_size // n_hosts
    self._host, self._n_hosts = host, n_hosts
    self._decoder = Decoder(meta, self.path)
    src = grain.sources.ArrayRecordDataSource(check_shards(self.path, meta))
    ds = grain.MapDataset.source(src)
    n = meta['num_examples']
    if meta['mode'] == 'stream':
      # The order is the training order (schedules!); more than one pass would repeat examples.
      self.num_batches = n // cfg.batch_size
    else:
      ds = ds[:n // cfg.batch_size * cfg.batch_size]  # whole global batches only, as the seqio path
      if cfg.shuffle:  # a new permutation each epoch (grain folds the epoch into the seed)
        ds = ds.shuffle(seed=cfg.seed or 0)
      ds = ds.repeat(cfg.num_epochs)
      self.num_batches = None if cfg.num_epochs is None else (
          n // cfg.batch_size * cfg.num_epochs)
    if num_batches is not None and self.num_batches is not None and num_batches > self.num_batches:
      raise ValueError(f'{where}: {n} examples make {self.num_batches} batches of '
                       f'{cfg.batch_size}, the run needs {num_batches} (export more with --steps)')
    if self.num_batches == 0:
      raise ValueError(f'{where}: {n} examples give no full batch of {cfg.batch_size}')
    # Rows of local size: global batch b is rows b*n_hosts .. b*n_hosts + n_hosts - 1, host h's is
    # row b*n_hosts + h.
    self._rows = ds.map(self._decoder).batch(self.local_batch, drop_remainder=True)
    self._read = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=8)
    self._sharding = sharding
    self.next_batch = 0
    self._iter = None
    self.checkpoint = ExportCheckpoint(self)
    self._log = None
    if cfg.batch_hash_dir:
      os.makedirs(cfg.batch_hash_dir, exist_ok=True)
      self._log = os.path.join(cfg.batch_hash_dir, f'host{host}of{n_hosts}.jsonl')

  def seek(self, next_batch: int) -> None:
    self.next_batch = next_batch
    self._iter = None

  def skip(self, n: int) -> None:
    """The next `n` global batches, passed over without reading them."""
    if self.num_batches is not None and self.next_batch + n > self.num_batches:
      raise ValueError(f'the data ended after {self.num_batches - self.next_batch} of the {n} '
                       'batches to skip')
    self.seek(self.next_batch + n)

  def _host_rows(self) -> Iterator[dict[str, np.ndarray]]:
    stop = None if self.num_batches is None else self.num_batches * self._n_hosts
    rows = self._rows[self.next_batch * self._n_hosts + self._host:stop:self._n_hosts]
    return iter(rows.to_iter_dataset(self._read))

  def next_local(self) -> dict[str, np.ndarray]:
    if self._iter is None:
      self._iter = self._host_rows()
    batch = next(self._iter)  # StopIteration at the end of a finite export
    if self._log:
      with open(self._log, 'a') as f:
        f.write(json.dumps({'batch': self.next_batch, 'first_row': self._host * self.local_batch,
                            'rows': self._row_hashes(batch)}) + '\n')
    self.next_batch += 1
    return batch

  def _row_hashes(self, batch) -> list[str]:
    # sha256 of each row re-encoded as its record: the same value whichever host read it.
    spec = self._decoder.spec
    return [hashlib.sha256(encode({k: batch[k][i] for k, _, _ in spec}, spec)).hexdigest()[:16]
            for i in range(self.local_batch)]

  def abstract_batch(self, global_batch: int) -> dict[str, jax.ShapeDtypeStruct]:
    return {name: jax.ShapeDtypeStruct((global_batch,) + shape, dtype.newbyteorder('='))
            for name, shape, dtype in self._decoder.spec}
