"""A model dir's model config (written and read back), vocabulary and parameters (for eval, export,
decoding)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_like import checkpointing, partitioning, vocabulary
from t5x_like.models import DecoderConfig, EncDecConfig, build_model

_FAMILIES = {'decoder': DecoderConfig, 'encdec': EncDecConfig}


def save_model_config(model_dir: str, cfg, *, resumed_from: Optional[int] = None) -> None:
  """MODEL_DIR/model.json: the family and the config's fields, what load_model_config reads.

  `resumed_from`: a run resumed from that step with a config that differs from the file's, in
  fields that change no shape (a larger rope_theta to extend the context, another param_dtype;
  check_model_config refuses the others), makes it the file's `config`; the one before is kept
  under `earlier` with the last step it made (`through_step`), so the checkpoints of each segment
  are read with their own config. The same config: the file stays as it is.
  """
  path = os.path.join(model_dir, 'model.json')
  meta = {'family': cfg.family, 'config': dataclasses.asdict(cfg)}
  if resumed_from is not None:
    with open(path) as f:
      before = json.load(f)
    if _as_json(before['config']) == _as_json(meta['config']):
      return
    meta['earlier'] = before.get('earlier', []) + [
        {'through_step': resumed_from, 'config': before['config']}]
  # Written whole or not at all: exporters and evaluators of the run read it.
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(meta, f, indent=2)
  os.replace(tmp, path)


def load_model_config(model_dir: str, step: Optional[int] = None):
  """The model config of a run dir: the one its checkpoint at `step` was trained with (a run
  resumed with another rope_theta or dtype has one per segment, save_model_config), or without a
  step the latest, which the run resumes with."""
  path = os.path.join(model_dir, 'model.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: is {model_dir} a model dir written by t5x_like.train?')
  with open(path) as f:
    meta = json.load(f)
  fields = meta['config']
  if step is not None:
    # The first segment that reached `step` made it: a checkpoint at the step a segment resumed
    # from belongs to the segment before.
    fields = next((e['config'] for e in meta.get('earlier', []) if e['through_step'] >= step),
                  fields)
  return _FAMILIES[meta['family']](**fields)


def load_vocabulary(model_dir: str):
  """MODEL_DIR/vocabulary, without TensorFlow or seqio (t5x_like/vocabulary.py)."""
  return vocabulary.load_vocabulary(os.path.join(model_dir, 'vocabulary'))


def boxed_abstract_params(cfg):
  """Shapes, dtypes and logical axes of a config's parameters, from `jax.eval_shape` (no allocation)."""
  return jax.eval_shape(lambda r: build_model(cfg).init(r, _dummy_batch(cfg))['params'],
                        jax.random.key(0))


def abstract_params(cfg):
  """Shapes and dtypes of a config's parameter tree (ShapeDtypeStructs, no axis metadata)."""
  return partitioning.unbox(boxed_abstract_params(cfg))


def load_params(model_dir: str, step: Optional[int] = None, mesh=None):
  """(params, step) of a run's checkpoint, sharded over `mesh` (default: all devices, data-parallel)."""
  cfg = load_model_config(model_dir, step)
  mesh = mesh or partitioning.make_mesh(partitioning.MeshConfig())
  boxed = boxed_abstract_params(cfg)
  shardings = partitioning.logical_to_sharding(nn.get_partition_spec(boxed), mesh)
  abstract = partitioning.with_sharding(partitioning.unbox(boxed), shardings)
  return checkpointing.restore_params(model_dir, abstract, step)


def _dummy_batch(cfg):
  batch = {'decoder_input_tokens': jnp.zeros((1, 8), jnp.int32)}
  if cfg.family == 'encdec':
    batch['encoder_input_tokens'] = jnp.zeros((1, 8), jnp.int32)
  return batch


# ---------------------------------------------------------------------------------------------------
# Identity: before anything is restored from a run dir (resume, init_params_from), its model config
# and vocabulary are compared with the current ones; a same-size vocabulary trained on other text
# would otherwise resume silently and train on ids that now mean other pieces.

class RunDirMismatch(ValueError):
  """The run dir was written by another model config or vocabulary; the message names both values."""


def check_model_config(model_dir: str, cfg, what: str, log=print) -> None:
  """Raises RunDirMismatch when MODEL_DIR/model.json has another family or other parameter shapes
  than `cfg`; fields that change no shape (dropout, dtype) only get a note. No model.json: nothing
  to compare (runs from before it was written)."""
  path = os.path.join(model_dir, 'model.json')
  if not os.path.exists(path):
    return
  with open(path) as f:
    meta = json.load(f)
  if meta['family'] != cfg.family:
    raise RunDirMismatch(f'{what}: {path} is a {meta["family"]!r} model, this config builds a '
                         f'{cfg.family!r} model (model family differs)')
  new = dataclasses.asdict(cfg)
  saved = meta['config']
  diff = {k: (saved.get(k), new.get(k)) for k in sorted(set(saved) | set(new))
          if _as_json(saved.get(k)) != _as_json(new.get(k))}
  if not diff:
    return
  text = ', '.join(f'{k}: {a!r} (run) vs {b!r} (this config)' for k, (a, b) in diff.items())
  old_shapes = jax.tree.map(lambda x: x.shape, abstract_params(_FAMILIES[meta['family']](**saved)))
  new_shapes = jax.tree.map(lambda x: x.shape, abstract_params(cfg))
  if old_shapes != new_shapes:
    raise RunDirMismatch(f'{what}: {path} has other parameter shapes than this config: {text}')
  log(f'note: {what}: model config differs from {path} in fields that change no shape: {text}')


def _as_json(x):
  return json.loads(json.dumps(x))


def vocabulary_fingerprint(directory: str) -> dict:
  """What identifies a saved vocabulary: vocabulary.json's content and the SentencePiece model's
  sha256 (hashing the file's bytes needs no vocabulary loader)."""
  out = {}
  meta = os.path.join(directory, 'vocabulary.json')
  if os.path.exists(meta):
    with open(meta) as f:
      out['meta'] = json.load(f)
  spm = os.path.join(directory, 'spm.model')
  if os.path.exists(spm):
    with open(spm, 'rb') as f:
      out['spm_sha256'] = hashlib.sha256(f.read()).hexdigest()
  return out


def check_vocabulary(model_dir: str, write_vocabulary, source: str, what: str) -> None:
  """Raises RunDirMismatch when MODEL_DIR/vocabulary differs in content (not only size) from the
  vocabulary that `write_vocabulary(directory)` writes (the data's: seqio task or export).
  No saved vocabulary: nothing to compare."""
  saved = vocabulary_fingerprint(os.path.join(model_dir, 'vocabulary'))
  if not saved:
    return
  with tempfile.TemporaryDirectory() as tmp:
    write_vocabulary(tmp)
    current = vocabulary_fingerprint(tmp)
  if saved.get('meta') != current.get('meta'):
    a, b = saved.get('meta', {}), current.get('meta', {})
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    raise RunDirMismatch(
        f'{what}: vocabulary differs from {model_dir}/vocabulary: ' +
        ', '.join(f'{k}: {a.get(k)!r} (run) vs {b.get(k)!r} ({source})' for k in keys[:4]))
  if saved.get('spm_sha256') != current.get('spm_sha256'):
    size = saved.get('meta', {}).get('vocab_size')
    raise RunDirMismatch(
        f'{what}: vocabulary content differs from {model_dir}/vocabulary/spm.model: sha256 '
        f'{saved.get("spm_sha256", "?")[:12]} (run) vs {current.get("spm_sha256", "?")[:12]} '
        f'({source}), same size {size}: a SentencePiece model trained on other text?')
