"""Export: a run's checkpoint -> a directory `transformers` loads with `from_pretrained`.

Streams: the parameters are restored once (as host numpy arrays), then each HF tensor is sliced,
transposed, cast, written and dropped (`safetensors_stream.write`), so the peak is one copy of the
weights plus one tensor.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

from t5x_like.convert import llama, t5
from t5x_like.convert import safetensors_stream as st
from t5x_like.convert.mapping import ConversionError, Rule, hf_shape, to_hf
from t5x_like.run_dir import abstract_params

_TORCH_DTYPES = {'float32': 'float32', 'bfloat16': 'bfloat16', 'float16': 'float16'}


def restore_numpy_params(model_dir: str, cfg, step: Optional[int] = None):
  """(params as numpy, step): Orbax reads straight into host arrays, with no device copy to double the
  footprint (checkpointing.restore_params returns sharded jax.Arrays, which export does not need)."""
  import jax
  import orbax.checkpoint as ocp
  from t5x_like import checkpointing
  abstract = abstract_params(cfg)
  mngr = ocp.CheckpointManager(checkpointing.checkpoint_dir(model_dir))
  step = mngr.latest_step() if step is None else step
  if step is None or step not in mngr.all_steps():
    raise ConversionError(f'no checkpoint {"" if step is None else f"at step {step} "}in '
                          f'{checkpointing.checkpoint_dir(model_dir)} (steps: {list(mngr.all_steps())})')
  args = jax.tree.map(lambda a: ocp.RestoreArgs(restore_type=np.ndarray, dtype=a.dtype),
                      {'params': abstract})
  restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item={'params': abstract}, restore_args=args, partial_restore=True)))
  mngr.close()
  return restored['state']['params'], step


def family_rules(cfg) -> list[Rule]:
  return llama.rules(cfg) if cfg.family == 'decoder' else t5.rules(cfg)


def _leaf(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def write_weights(params, cfg, out: str, *, dtype: str = 'float32',
                  max_shard_bytes: int = st.DEFAULT_MAX_SHARD_BYTES) -> list[str]:
  """Writes `params` (numpy or jax arrays) as HF safetensors; returns the files."""
  np_dtype = st.np_dtype(dtype)
  rules = family_rules(cfg)
  by_name = {r.hf: r for r in rules}
  specs = []
  for r in rules:
    shape = tuple(_leaf(params, r.ours).shape)
    specs.append(st.TensorSpec(r.hf, hf_shape(r.kind, shape[1:] if r.layer is not None else shape),
                               np_dtype))

  def produce(spec):
    r = by_name[spec.name]
    a = _leaf(params, r.ours)
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
  from transformers import GenerationConfig
  d = hf_config(cfg, dtype, hf_arch)
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, 'config.json'), 'w') as f:
    json.dump(d, f, indent=2, sort_keys=True)
  gen = dict(eos_token_id=1, pad_token_id=0)
  if cfg.family == 'encdec':
    gen['decoder_start_token_id'] = 0
  GenerationConfig(**gen).save_pretrained(out)
  return d


def export(model_dir: str, out: str, *, step: Optional[int] = None, dtype: Optional[str] = None,
           hf_arch: str = 't5', max_shard_bytes: int = st.DEFAULT_MAX_SHARD_BYTES,
           log=print) -> dict:
  """`python -m t5x_like.convert to-hf`: the whole export of a model dir."""
  from t5x_like import run_dir
  if not os.path.isdir(model_dir):
    raise ConversionError(f'--model_dir {model_dir} does not exist')
  try:
    cfg = run_dir.load_model_config(model_dir)
  except FileNotFoundError as e:
    raise ConversionError(str(e)) from e
  dtype = dtype or cfg.param_dtype
  if dtype not in _TORCH_DTYPES:
    raise ConversionError(f'--dtype {dtype!r}; choose one of {sorted(_TORCH_DTYPES)}')
  write_configs(cfg, out, dtype, hf_arch)  # refuses unexportable configs before anything is read
  params, step = restore_numpy_params(model_dir, cfg, step)
  files = write_weights(params, cfg, out, dtype=dtype, max_shard_bytes=max_shard_bytes)
  del params
  notes = {}
  vocab_dir = os.path.join(model_dir, 'vocabulary')
  if os.path.exists(os.path.join(vocab_dir, 'vocabulary.json')):
    from t5x_like.convert import tokenizer
    notes = tokenizer.write_hf_tokenizer(vocab_dir, out, family=cfg.family,
                                         model_vocab_size=cfg.vocab_size)
  else:
    log(f'note: {vocab_dir} not found: no tokenizer written')
  arch = json.load(open(os.path.join(out, 'config.json')))['architectures'][0]
  log(f'exported {model_dir} step {step} -> {out}: {arch}, {dtype}, {len(files)} safetensors file(s)'
      + (f', tokenizer with {notes["vocab_entries"]} entries' if notes else ''))
  return {'step': step, 'files': files, 'architecture': arch, **notes}
