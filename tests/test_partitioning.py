"""Mesh construction, the rules table, and parameters/optimizer state really sharded on a 2x4 mesh."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from t5x_like import optimizers, partitioning, trainer
from t5x_like.models import DecoderConfig, EncDecConfig, build_model

BATCH = {'decoder_input_tokens': jax.ShapeDtypeStruct((8, 16), np.int32)}


def test_mesh_fills_minus_one_and_rejects_bad_shapes():
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=-1, fsdp=2, tensor=2))
  assert dict(mesh.shape) == {'data': 2, 'fsdp': 2, 'tensor': 2}
  with pytest.raises(ValueError, match='needs 12 devices'):
    partitioning.make_mesh(partitioning.MeshConfig(data=3, fsdp=2, tensor=2))
  with pytest.raises(ValueError, match='at most one'):
    partitioning.make_mesh(partitioning.MeshConfig(data=-1, fsdp=-1))
  sub = partitioning.make_mesh(partitioning.MeshConfig(data=-1), devices=jax.devices()[:4])
  assert sub.devices.size == 4


def _state(cfg, mesh_cfg):
  mesh = partitioning.make_mesh(mesh_cfg)
  model = build_model(cfg)
  tx = optimizers.make_optimizer(optimizers.OptimizerConfig(), 10)
  abstract, shardings = trainer.state_shardings(model, tx, BATCH, mesh)
  state = trainer.create_state(model, tx, BATCH, mesh, shardings, jax.random.key(0))
  return state, mesh


def test_decoder_params_and_optimizer_state_sharded_on_2x4_mesh():
  cfg = DecoderConfig(vocab_size=128, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=4,
                      head_dim=8, mlp_dim=64, dtype='float32')
  state, mesh = _state(cfg, partitioning.MeshConfig(data=1, fsdp=2, tensor=4))
  wi = state['params']['layers']['mlp']['wi_0']['kernel']  # [layers, embed, mlp]
  assert wi.sharding.spec == P(None, 'fsdp', 'tensor')
  assert {s.data.shape for s in wi.addressable_shards} == {(2, 16, 16)}
  q = state['params']['layers']['attention']['query']['kernel']  # [layers, embed, heads, kv]
  assert q.sharding.spec == P(None, 'fsdp', 'tensor', None)
  emb = state['params']['token_embed']['embedding']
  assert emb.sharding.spec == P('tensor', 'fsdp')
  # Adam moments follow their parameters' layout; they are as sharded as the params.
  adam = state['opt_state'][1][0]
  mu = adam.mu['layers']['mlp']['wi_0']['kernel']
  assert mu.sharding.spec == wi.sharding.spec
  assert {s.data.shape for s in mu.addressable_shards} == {(2, 16, 16)}
  # No device holds a full copy of a sharded parameter.
  per_device = sum(s.data.size for s in wi.addressable_shards if s.device == jax.devices()[0])
  assert per_device == wi.size // 8


def test_encdec_params_sharded():
  cfg = EncDecConfig(vocab_size=128, embed_dim=32, num_encoder_layers=1, num_decoder_layers=1,
                     num_heads=4, head_dim=8, mlp_dim=64, dtype='float32', scan_layers=False)
  batch = dict(BATCH, encoder_input_tokens=jax.ShapeDtypeStruct((8, 16), np.int32))
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=2, fsdp=2, tensor=2))
  model = build_model(cfg)
  tx = optimizers.make_optimizer(optimizers.OptimizerConfig(), 10)
  _, shardings = trainer.state_shardings(model, tx, batch, mesh)
  sh = shardings['params']['decoder']['layers_0']['cross_attention']['out']['kernel']
  assert sh.spec == P('tensor', None, 'fsdp')
  assert shardings['params']['lm_head']['kernel'].spec == P('fsdp', 'tensor')


def test_indivisible_parameter_is_named_before_compile():
  cfg = DecoderConfig(vocab_size=128, embed_dim=32, num_layers=1, num_heads=4, num_kv_heads=2,
                      head_dim=8, mlp_dim=64, dtype='float32')
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=2, tensor=4))
  tx = optimizers.make_optimizer(optimizers.OptimizerConfig(), 10)
  with pytest.raises(ValueError, match=r"\['key'\]\['kernel'\].*not divisible by mesh axes \('tensor',\)"):
    trainer.state_shardings(build_model(cfg), tx, BATCH, mesh)
