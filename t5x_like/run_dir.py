"""A model dir's model config (written and read back), vocabulary and parameters (for eval, export,
decoding)."""
from __future__ import annotations

import json
import os
from typing import Optional

import jax

from t5x_like.models import DecoderConfig, EncDecConfig

_FAMILIES = {'decoder': DecoderConfig, 'encdec': EncDecConfig}


def save_model_config(model_dir: str, cfg) -> None:
  """MODEL_DIR/model.json: the family and the config's fields, what load_model_config reads."""
  import dataclasses
  with open(os.path.join(model_dir, 'model.json'), 'w') as f:
    json.dump({'family': cfg.family, 'config': dataclasses.asdict(cfg)}, f, indent=2)


def load_model_config(model_dir: str):
  path = os.path.join(model_dir, 'model.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: is {model_dir} a model dir written by t5x_like.train?')
  with open(path) as f:
    meta = json.load(f)
  return _FAMILIES[meta['family']](**meta['config'])


def load_vocabulary(model_dir: str):
  """MODEL_DIR/vocabulary, without TensorFlow or seqio (t5x_like/vocabulary.py)."""
  from t5x_like import vocabulary
  return vocabulary.load_vocabulary(os.path.join(model_dir, 'vocabulary'))


def boxed_abstract_params(cfg):
  """Shapes, dtypes and logical axes of a config's parameters, from `jax.eval_shape` (no allocation)."""
  from t5x_like.models import build_model
  return jax.eval_shape(lambda r: build_model(cfg).init(r, _dummy_batch(cfg))['params'],
                        jax.random.key(0))


def abstract_params(cfg):
  """Shapes and dtypes of a config's parameter tree (ShapeDtypeStructs, no axis metadata)."""
  from t5x_like.trainer import unbox
  return unbox(boxed_abstract_params(cfg))


def load_params(model_dir: str, step: Optional[int] = None, mesh=None):
  """(params, step) of a run's checkpoint, sharded over `mesh` (default: all devices, data-parallel)."""
  import flax.linen as nn
  from t5x_like import checkpointing, partitioning
  from t5x_like.trainer import unbox
  cfg = load_model_config(model_dir)
  mesh = mesh or partitioning.make_mesh(partitioning.MeshConfig())
  boxed = boxed_abstract_params(cfg)
  shardings = partitioning.logical_to_sharding(nn.get_partition_spec(boxed), mesh)
  abstract = partitioning.with_sharding(unbox(boxed), shardings)
  return checkpointing.restore_params(model_dir, abstract, step)


def _dummy_batch(cfg):
  import jax.numpy as jnp
  batch = {'decoder_input_tokens': jnp.zeros((1, 8), jnp.int32)}
  if cfg.family == 'encdec':
    batch['encoder_input_tokens'] = jnp.zeros((1, 8), jnp.int32)
  return batch
