"""Decoder-only models <-> Hugging Face `LlamaForCausalLM`.

Our Decoder is Llama's computation: pre-norm RMSNorm, rotary embeddings in HF's half-split
(`rotate_half`) layout, so q/k need no permutation, SwiGLU MLP, grouped-query attention, 1/sqrt(head_dim)
attention scale.
"""
from __future__ import annotations

import dataclasses

from t5x_like.convert import hf_library
from t5x_like.convert.mapping import ConversionError, Rule, check_fields, layer_param
from t5x_like.models import DecoderConfig, RopeScaling

ARCHITECTURE = 'LlamaForCausalLM'
MODEL_TYPES = ('llama',)

# Per layer: (HF name under model.layers.{i}., our path under the block, kind).
_LAYER = (
    ('input_layernorm.weight', ('attention_norm', 'scale'), 'copy'),
    ('self_attn.q_proj.weight', ('attention', 'query', 'kernel'), 'heads_in'),
    ('self_attn.k_proj.weight', ('attention', 'key', 'kernel'), 'heads_in'),
    ('self_attn.v_proj.weight', ('attention', 'value', 'kernel'), 'heads_in'),
    ('self_attn.o_proj.weight', ('attention', 'out', 'kernel'), 'heads_out'),
    ('post_attention_layernorm.weight', ('mlp_norm', 'scale'), 'copy'),
    ('mlp.gate_proj.weight', ('mlp', 'wi_0', 'kernel'), 'T'),
    ('mlp.up_proj.weight', ('mlp', 'wi_1', 'kernel'), 'T'),
    ('mlp.down_proj.weight', ('mlp', 'wo', 'kernel'), 'T'),
)
# Transposed (torch [out, in] vs our [in, out]): q/k/v/o projections, gate/up/down, lm_head.


def rules(cfg: DecoderConfig) -> list[Rule]:
  out = [Rule('model.embed_tokens.weight', ('token_embed', 'embedding'), None, 'copy')]
  for i in range(cfg.num_layers):
    for hf, rest, kind in _LAYER:
      path, idx = layer_param(cfg.scan_layers, (), i, rest)
      out.append(Rule(f'model.layers.{i}.{hf}', path, idx, kind))
  out.append(Rule('model.norm.weight', ('final_norm', 'scale'), None, 'copy'))
  if not cfg.tie_embeddings:
    out.append(Rule('lm_head.weight', ('lm_head', 'kernel'), None, 'T'))
  return out


def check_exportable(cfg: DecoderConfig) -> None:
  if cfg.position_embedding != 'rope':
    raise ConversionError(
        f"DecoderConfig.position_embedding={cfg.position_embedding!r} has no equivalent in "
        f"{ARCHITECTURE} (rotary only), and no HF architecture has learned absolute positions with "
        "RMSNorm + SwiGLU; export needs position_embedding='rope'")
  if cfg.embed_dim % cfg.num_heads:
    # LlamaConfig.validate_architecture insists on it even when head_dim is given.
    raise ConversionError(f'DecoderConfig.embed_dim={cfg.embed_dim} is not a multiple of '
                          f'num_heads={cfg.num_heads}, which LlamaConfig refuses')


def _rope_parameters(cfg: DecoderConfig) -> dict:
  if cfg.rope_scaling is None:
    return {'rope_type': 'default', 'rope_theta': cfg.rope_theta}
  return {'rope_type': 'llama3', 'rope_theta': cfg.rope_theta,
          **dataclasses.asdict(cfg.rope_scaling)}


def hf_config(cfg: DecoderConfig, torch_dtype: str) -> dict:
  c = hf_library.transformers().LlamaConfig(
      vocab_size=cfg.vocab_size, hidden_size=cfg.embed_dim, intermediate_size=cfg.mlp_dim,
      num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
      num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, hidden_act='silu',
      max_position_embeddings=cfg.max_length, rms_norm_eps=cfg.rms_norm_eps,
      rope_parameters=_rope_parameters(cfg),
      tie_word_embeddings=cfg.tie_embeddings, initializer_range=cfg.init_std,
      # T5-convention ids (tasks/vocab.py): pad 0, eos 1. Id 0 also starts every training input
      # (targets shifted right), so it is the BOS the exported tokenizer puts first.
      bos_token_id=0, eos_token_id=1, pad_token_id=0)
  d = c.to_dict()
  d['architectures'] = [ARCHITECTURE]
  d['dtype'] = torch_dtype
  return d


HANDLED = frozenset({
    'vocab_size', 'hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads',
    'num_key_value_heads', 'head_dim', 'hidden_act', 'max_position_embeddings', 'rms_norm_eps',
    'rope_parameters', 'rope_theta', 'rope_scaling', 'tie_word_embeddings', 'attention_bias',
    'mlp_bias', 'attention_dropout', 'initializer_range', 'pretraining_tp'})
IGNORED = frozenset({
    'architectures', 'model_type', 'transformers_version', '_name_or_path', 'torch_dtype', 'dtype',
    'use_cache',
    # token ids belong to the tokenizer, which is converted separately
    'bos_token_id', 'eos_token_id', 'pad_token_id'})


def from_hf_config(d: dict, **overrides) -> DecoderConfig:
  if d.get('model_type') not in MODEL_TYPES:
    raise ConversionError(f"model_type={d.get('model_type')!r} is not a Llama model")
  check_fields(d, hf_library.transformers().LlamaConfig().to_dict(), HANDLED, IGNORED, 'Llama')

  def require(field, ok, want):
    if field in d and d[field] is not None and not ok(d[field]):
      raise ConversionError(f'Llama config field {field}={d[field]!r} is not supported (need {want})')

  require('hidden_act', lambda v: v == 'silu', "'silu'")
  require('attention_bias', lambda v: v is False, 'false')
  require('mlp_bias', lambda v: v is False, 'false')
  require('attention_dropout', lambda v: v == 0, '0')
  require('pretraining_tp', lambda v: v == 1, '1')
  # transformers 5 writes rope_parameters (theta included); earlier versions rope_theta + rope_scaling.
  field = 'rope_parameters' if d.get('rope_parameters') else 'rope_scaling'
  rope = {**(d.get('rope_scaling') or {}), **(d.get('rope_parameters') or {})}
  rope_type = rope.get('rope_type', rope.get('type', 'default'))
  theta = rope.get('rope_theta', d.get('rope_theta', 10000.0))
  scaling = None
  if rope_type == 'llama3':
    try:
      scaling = RopeScaling(float(rope['factor']), float(rope['low_freq_factor']),
                            float(rope['high_freq_factor']),
                            int(rope['original_max_position_embeddings']))
    except (KeyError, ValueError) as e:
      raise ConversionError(f"Llama config field {field}={rope!r} is not supported (rope_type 'llama3' "
                            f'needs {", ".join(f.name for f in dataclasses.fields(RopeScaling))}: '
                            f'{e!r})') from None
  elif rope_type != 'default':
    raise ConversionError(f"Llama config field {field}={rope!r} is not supported (need rope_type "
                          "'default' or 'llama3')")
  heads = d['num_attention_heads']
  fields = dict(
      vocab_size=d['vocab_size'], embed_dim=d['hidden_size'], num_layers=d['num_hidden_layers'],
      num_heads=heads, num_kv_heads=d.get('num_key_value_heads') or heads,
      head_dim=d.get('head_dim') or d['hidden_size'] // heads, mlp_dim=d['intermediate_size'],
      rms_norm_eps=d.get('rms_norm_eps', 1e-6), position_embedding='rope', rope_theta=float(theta),
      rope_scaling=scaling,
      max_length=d.get('max_position_embeddings', 2048),
      tie_embeddings=bool(d.get('tie_word_embeddings', False)),
      init_std=d.get('initializer_range', 0.02))
  fields.update(overrides)
  names = {f.name for f in dataclasses.fields(DecoderConfig)}
  return DecoderConfig(**{k: v for k, v in fields.items() if k in names})


# HF tensors that carry no parameters of ours (buffers some versions saved).
IGNORED_TENSORS = ('rotary_emb.inv_freq',)
