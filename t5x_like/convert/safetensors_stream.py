"""Streaming safetensors I/O: write tensors one at a time, read them one at a time (memory-mapped).

`safetensors.torch.save_file` wants every tensor in memory at once; a converter that did that would hold the
weights twice (its source tree plus the torch copies). Here the header is computed from shapes alone, then
each tensor is produced, written and dropped, so peak memory is the source weights plus one tensor. The
reader memory-maps each file: a tensor is a view of the page cache until it is copied into its target.

Format (https://github.com/huggingface/safetensors): 8-byte little-endian header length, a JSON header
{name: {dtype, shape, data_offsets}}, padded with spaces to 8 bytes, then the raw little-endian data.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Optional, Sequence

import ml_dtypes
import numpy as np

_DTYPES = {
    'F32': np.dtype(np.float32), 'F16': np.dtype(np.float16), 'BF16': np.dtype(ml_dtypes.bfloat16),
    'F64': np.dtype(np.float64), 'I64': np.dtype(np.int64), 'I32': np.dtype(np.int32),
    'I16': np.dtype(np.int16), 'I8': np.dtype(np.int8), 'U8': np.dtype(np.uint8),
    'BOOL': np.dtype(np.bool_),
}
_CODES = {v: k for k, v in _DTYPES.items()}
SINGLE_FILE = 'model.safetensors'
INDEX_FILE = 'model.safetensors.index.json'
DEFAULT_MAX_SHARD_BYTES = 5 * 1024 ** 3  # what `save_pretrained` uses ("5GB")


def np_dtype(name: str) -> np.dtype:
  """'float32' | 'bfloat16' | 'float16' -> numpy dtype (bfloat16 from ml_dtypes)."""
  return np.dtype(ml_dtypes.bfloat16) if name == 'bfloat16' else np.dtype(name)


@dataclasses.dataclass(frozen=True)
class TensorSpec:
  name: str
  shape: tuple[int, ...]
  dtype: np.dtype

  @property
  def nbytes(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def plan_shards(specs: Sequence[TensorSpec], max_shard_bytes: int) -> list[list[TensorSpec]]:
  """Greedy split in the given order; a tensor bigger than the limit gets a shard of its own."""
  shards: list[list[TensorSpec]] = [[]]
  size = 0
  for s in specs:
    if shards[-1] and size + s.nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(s)
    size += s.nbytes
  return shards


def _header(specs: Sequence[TensorSpec], metadata: Optional[dict]) -> bytes:
  header, offset = {}, 0
  for s in specs:
    header[s.name] = {'dtype': _CODES[s.dtype], 'shape': list(s.shape),
                      'data_offsets': [offset, offset + s.nbytes]}
    offset += s.nbytes
  if metadata:
    header['__metadata__'] = metadata
  raw = json.dumps(header, separators=(',', ':')).encode()
  return raw + b' ' * (-len(raw) % 8)


def write(out_dir: str, specs: Sequence[TensorSpec], produce: Callable[[TensorSpec], np.ndarray], *,
          max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, metadata: Optional[dict] = None) -> list[str]:
  """Writes `specs` in order, calling `produce(spec)` for one tensor at a time.

  One file (`model.safetensors`) when everything fits in `max_shard_bytes`, else
  `model-0000i-of-0000n.safetensors` plus `model.safetensors.index.json`, as `save_pretrained` names them.
  Returns the files written.
  """
  names = [s.name for s in specs]
  if len(set(names)) != len(names):
    raise ValueError('duplicate tensor names')
  metadata = {'format': 'pt', **(metadata or {})}
  shards = plan_shards(specs, max_shard_bytes)
  files = ([SINGLE_FILE] if len(shards) == 1 else
           [f'model-{i + 1:05d}-of-{len(shards):05d}.safetensors' for i in range(len(shards))])
  os.makedirs(out_dir, exist_ok=True)
  for fname, shard in zip(files, shards):
    with open(os.path.join(out_dir, fname), 'wb') as f:
      header = _header(shard, metadata)
      f.write(len(header).to_bytes(8, 'little'))
      f.write(header)
      for s in shard:
        a = np.asarray(produce(s))
        if a.shape != s.shape or a.dtype != s.dtype:
          raise ValueError(f'{s.name}: produced {a.dtype}{list(a.shape)}, planned {s.dtype}{list(s.shape)}')
        # A uint8 view of a contiguous array: no bytes copy (`tobytes` would make one), and it works
        # for bfloat16, which the buffer protocol cannot describe.
        f.write(memoryview(np.ascontiguousarray(a).reshape(-1).view(np.uint8)))
        del a
  if len(shards) > 1:
    index = {'metadata': {'total_size': sum(s.nbytes for s in specs)},
             'weight_map': {s.name: fname for fname, shard in zip(files, shards) for s in shard}}
    with open(os.path.join(out_dir, INDEX_FILE), 'w') as f:
      json.dump(index, f, indent=2)
  elif os.path.exists(os.path.join(out_dir, INDEX_FILE)):
    os.remove(os.path.join(out_dir, INDEX_FILE))  # a stale index would point at missing shards
  return files


_NAMES_SHOWN = 8  # of a folder's files, in the error for a folder without weights


class Reader:
  """All tensors of an HF checkpoint dir (single file or sharded with an index), read one at a time."""

  def __init__(self, hf_dir: str):
    index_path = os.path.join(hf_dir, INDEX_FILE)
    if os.path.exists(index_path):
      with open(index_path) as f:
        files = sorted(set(json.load(f)['weight_map'].values()))
    elif os.path.exists(os.path.join(hf_dir, SINGLE_FILE)):
      files = [SINGLE_FILE]
    else:
      found = sorted(os.listdir(hf_dir))
      # A few names tell what the folder is (a .bin checkpoint, the wrong folder); all of them, in a
      # folder of thousands, would bury the line.
      shown = ', '.join(found[:_NAMES_SHOWN]) + (f', ... ({len(found)} in all)'
                                                 if len(found) > _NAMES_SHOWN else '')
      raise FileNotFoundError(f'{hf_dir} has no {SINGLE_FILE} or {INDEX_FILE} (found: '
                              f'{shown or "nothing"}); PyTorch .bin checkpoints: re-save with '
                              'save_pretrained(safe_serialization=True)')
    self._where: dict[str, tuple[str, dict, int]] = {}
    for fname in files:
      path = os.path.join(hf_dir, fname)
      size = os.path.getsize(path)
      with open(path, 'rb') as f:
        n = int.from_bytes(f.read(8), 'little')
        try:
          if n > size - 8:
            raise ValueError(f'declares a {n}-byte header')
          header = json.loads(f.read(n))
        except ValueError as e:  # (json's errors are ValueErrors)
          raise ValueError(f'{path}: not a readable safetensors file ({size} bytes; {e})') from e
      header.pop('__metadata__', None)
      # A truncated file (a copy or download cut short) is refused here, before anything is converted.
      end = 8 + n + max((info['data_offsets'][1] for info in header.values()), default=0)
      if end > size:
        raise ValueError(f'{path}: truncated: its header places tensor data up to byte {end}, the '
                         f'file has {size} bytes')
      for name, info in header.items():
        self._where[name] = (path, info, 8 + n)

  def keys(self) -> list[str]:
    return sorted(self._where)

  def spec(self, name: str) -> TensorSpec:
    _, info, _ = self._where[name]
    return TensorSpec(name, tuple(info['shape']), _DTYPES[info['dtype']])

  def get(self, name: str) -> np.ndarray:
    """One tensor, read into memory of its own.

    Not a memory map: mapped pages a converter has touched stay resident (and count in RSS) until the
    file is closed, which would hold a second copy of the whole checkpoint by the end of an import.
    """
    path, info, start = self._where[name]
    spec = self.spec(name)
    begin, end = info['data_offsets']
    if end == begin:
      return np.zeros(spec.shape, spec.dtype)
    count = int(np.prod(spec.shape))
    return np.fromfile(path, dtype=spec.dtype, count=count, offset=start + begin).reshape(spec.shape)

