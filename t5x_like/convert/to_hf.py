"""Export: a run's checkpoint -> a directory `transformers` loads with `from_pretrained`.

Streams: the parameters are restored one at a time (as host numpy arrays); each HF tensor is sliced
from its parameter, transposed, cast, written and dropped (`safetensors_stream.write`), so the peak is
one parameter plus one tensor, not the weights.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Optional

import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from t5x_like import checkpointing, run_dir, state_checksums
from t5x_like.convert import hf_library, llama, t5
from t5x_like.convert import safetensors_stream as st
from t5x_like.convert import tokenizer
from t5x_like.convert.mapping import ConversionError, Rule, hf_shape, to_hf

_TORCH_DTYPES = {'float32': 'float32', 'bfloat16': 'bfloat16', 'float16': 'float16'}


class CheckpointLeaves:
  """path -> numpy array of one parameter of a run's checkpoint, restored on demand; only the last
  one is kept, so reading the parameters in order holds one at a time. Orbax reads straight into
  host arrays (no device copy). Each is compared with the checksum saved with it, as every restore
  in training and evaluation is (CheckpointDamaged when its bits changed)."""

  def __init__(self, model_dir: str, step: Optional[int] = None):
    run_dir.load_model_config(model_dir)  # (no model.json: said before the checkpoints are listed)
    checkpointing.quiet_what_failed_reads_and_writes_leave_behind()
    self._mngr = checkpointing.open_reader(checkpointing.checkpoint_dir(model_dir))
    self._path, self._value = None, None
    try:
      self.step = self._mngr.latest_step() if step is None else step
      if self.step is None or self.step not in self._mngr.all_steps():
        raise ConversionError(f'no checkpoint {"" if step is None else f"at step {step} "}in '
                              f'{checkpointing.checkpoint_dir(model_dir)} '
                              f'(steps: {list(self._mngr.all_steps())})')
      # The config this step was trained with (a run resumed with another rope_theta has several).
      self.cfg = run_dir.load_model_config(model_dir, self.step)
      self._abstract = traverse_util.flatten_dict(run_dir.abstract_params(self.cfg))
      self._saved = checkpointing.saved_checksums(self._mngr, self.step)
    except BaseException:
      self._mngr.close()
      raise

  def __call__(self, path: tuple) -> np.ndarray:
    if path != self._path:
      self._path, self._value = None, None  # dropped before the next one is read
      abstract = self._abstract[path]
      item = {'params': traverse_util.unflatten_dict({path: abstract})}
      args = {'params': traverse_util.unflatten_dict(
          {path: ocp.RestoreArgs(restore_type=np.ndarray, dtype=abstract.dtype)})}
      try:
        restored = self._mngr.restore(self.step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item=item, restore_args=args, partial_restore=True)))
      except Exception as e:  # pylint: disable=broad-except  # damaged or mismatched: named
        raise checkpointing.diagnose(self._mngr.directory, self.step, item, e) from e
      value = traverse_util.flatten_dict(restored['state']['params'])[path]
      name = '/'.join(('params',) + path)  # as state_checksums names it
      mismatch = name in self._saved and state_checksums.first_mismatch(self._saved, {name: {
          'dtype': str(value.dtype), 'checksum': state_checksums.host_checksum(value)}})
      if mismatch:
        raise checkpointing.damaged(self._mngr.directory, self.step, mismatch)
      self._path, self._value = path, value
    return self._value

  def close(self):
    self._path, self._value = None, None
    self._mngr.close()


def family_rules(cfg) -> list[Rule]:
  return llama.rules(cfg) if cfg.family == 'decoder' else t5.rules(cfg)


def _leaf(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def write_weights(params, cfg, out: str, *, dtype: str = 'float32',
                  max_shard_bytes: int = st.DEFAULT_MAX_SHARD_BYTES) -> list[str]:
  """Writes `params` as HF safetensors; returns the files.

  `params`: a tree of numpy or jax arrays, or a callable path -> array such as CheckpointLeaves. The
  tensors are written grouped by our parameter (every layer of a scanned parameter in a row), so a
  callable that keeps one parameter is asked for each parameter once.
  """
  np_dtype = st.np_dtype(dtype)
  get = params if callable(params) else (lambda path: _leaf(params, path))
  abstract = run_dir.abstract_params(cfg)
  rules = family_rules(cfg)
  first_use = {}
  for r in rules:
    first_use.setdefault(r.ours, len(first_use))
  rules = sorted(rules, key=lambda r: (first_use[r.ours], r.layer or 0))
  by_name = {r.hf: r for r in rules}
  specs = []
  for r in rules:
    shape = tuple(_leaf(abstract, r.ours).shape)
    specs.append(st.TensorSpec(r.hf, hf_shape(r.kind, shape[1:] if r.layer is not None else shape),
                               np_dtype))

  def produce(spec):
    r = by_name[spec.name]
    a = get(r.ours)
    a = np.asarray(a[r.layer] if r.layer is not None else a)
    return np.ascontiguousarray(to_hf(r.kind, a).astype(np_dtype, copy=False))

  return st.write(out, specs, produce, max_shard_bytes=max_shard_bytes)


def hf_config(cfg, dtype: str, hf_arch: str = 't5') -> dict:
  if cfg.family == 'decoder':
    llama.check_exportable(cfg)
    return llama.hf_config(cfg, _TORCH_DTYPES[dtype])
  t5.check_exportable(cfg, hf_arch)
  return t5.hf_config(cfg, _TORCH_DTYPES[dtype], hf_arch)


def write_configs(cfg, out: str, dtype: str, hf_arch: str = 't5') -> dict:
  d = hf_config(cfg, dtype, hf_arch)
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, 'config.json'), 'w') as f:
    json.dump(d, f, indent=2, sort_keys=True)
  write_generation_config(cfg, out)
  return d


def write_generation_config(cfg, out: str, eos_token_ids=(1,)) -> None:
  """Generation starts where training did: from id 0 (the decoder-only BOS, the encoder-decoder's
  decoder start) and stops at every language's EOS (`eos_token_ids`: one per cloned language)."""
  eos = list(eos_token_ids) if len(eos_token_ids) > 1 else eos_token_ids[0]
  if cfg.family == 'encdec':
    gen = dict(decoder_start_token_id=0, eos_token_id=eos, pad_token_id=0)
  else:
    # No pad id: the prompt's leading 0 *is* the pad id, and generate() would mask it as padding when
    # called without an attention_mask. (transformers then pads finished rows with the first EOS.)
    gen = dict(bos_token_id=0, eos_token_id=eos)
  hf_library.transformers().GenerationConfig(**gen).save_pretrained(out)


def export(model_dir: str, out: str, *, step: Optional[int] = None, dtype: Optional[str] = None,
           hf_arch: str = 't5', max_shard_bytes: int = st.DEFAULT_MAX_SHARD_BYTES,
           log=print) -> dict:
  """`python -m t5x_like.convert to-hf`: the whole export of a model dir."""
  if not os.path.isdir(model_dir):
    raise ConversionError(f'--model_dir {model_dir} does not exist')
  if dtype is not None and dtype not in _TORCH_DTYPES:
    raise ConversionError(f'--dtype {dtype!r}; choose one of {sorted(_TORCH_DTYPES)}')
  try:
    leaves = CheckpointLeaves(model_dir, step)  # refuses a missing step before anything is written
  except FileNotFoundError as e:
    raise ConversionError(str(e)) from e
  cfg, step = leaves.cfg, leaves.step
  dtype = dtype or cfg.param_dtype
  # Written beside `out` and moved into it once complete: an export that fails half-way (a damaged
  # checkpoint, a full disk) leaves `out` as it was, never a half-written model another tool loads.
  parent = os.path.dirname(os.path.abspath(out))
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f'.{os.path.basename(os.path.abspath(out))}.partial-', dir=parent)
  try:
    arch = write_configs(cfg, staging, dtype, hf_arch)['architectures'][0]  # refuses before it writes
    files = write_weights(leaves, cfg, staging, dtype=dtype, max_shard_bytes=max_shard_bytes)
    notes = {}
    vocab_dir = os.path.join(model_dir, 'vocabulary')
    if os.path.exists(os.path.join(vocab_dir, 'vocabulary.json')):
      notes = tokenizer.write_hf_tokenizer(vocab_dir, staging, family=cfg.family,
                                           model_vocab_size=cfg.vocab_size)
      write_generation_config(cfg, staging, notes['eos_token_ids'])
    else:
      log(f'note: {vocab_dir} not found: no tokenizer written')
    _move_into(staging, out)
  finally:
    leaves.close()
    shutil.rmtree(staging, ignore_errors=True)
  log(f'exported {model_dir} step {step} -> {out}: {arch}, {dtype}, {len(files)} safetensors file(s)'
      + (f', tokenizer with {notes["vocab_entries"]} entries' if notes else ''))
  return {'step': step, 'files': files, 'architecture': arch, **notes}


def _move_into(staging: str, out: str) -> None:
  """The files of a complete export, moved into `out` (made if missing; other files in it are kept).
  A single-file export removes the shard index an earlier sharded export left: it would point the
  loader at the old shards."""
  os.makedirs(out, exist_ok=True)
  written = os.listdir(staging)
  if st.INDEX_FILE not in written and os.path.exists(os.path.join(out, st.INDEX_FILE)):
    os.remove(os.path.join(out, st.INDEX_FILE))
  for name in written:
    os.replace(os.path.join(staging, name), os.path.join(out, name))
