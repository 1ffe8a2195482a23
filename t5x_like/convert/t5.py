"""Encoder-decoders <-> Hugging Face `T5ForConditionalGeneration` / `MT5ForConditionalGeneration`.

Our EncoderDecoder is T5 v1.1 / mT5: pre-norm RMSNorm, no attention scaling, gated MLP, one relative
position bias table per stack (HF keeps it in block 0 of the stack and shares it), untied LM head.

The tying trap (transformers 5): T5Config/MT5Config always set `tie_word_embeddings=True`, so a model built
in Python shares `lm_head.weight` with `shared.weight` and `save_pretrained` drops the head. We therefore
write config.json and the safetensors ourselves, with a distinct `lm_head.weight` and
`tie_word_embeddings: false` / `scale_decoder_outputs: false`; `from_pretrained` then loads the head untied.
On import, a checkpoint without `lm_head.weight` is what HF computes with: the head *is* `shared.weight`,
scaled by d_model**-0.5 only when `scale_decoder_outputs` is true (T5 v1.0 style, our tie_embeddings=True).
"""
from __future__ import annotations

import dataclasses

from t5x_like.convert import hf_library
from t5x_like.convert.mapping import ConversionError, Rule, check_fields, layer_param
from t5x_like.models import EncDecConfig

ARCHITECTURES = {'t5': 'T5ForConditionalGeneration', 'mt5': 'MT5ForConditionalGeneration'}
MODEL_TYPES = tuple(ARCHITECTURES)

_ATTN = (('q', 'query', 'heads_in'), ('k', 'key', 'heads_in'), ('v', 'value', 'heads_in'),
         ('o', 'out', 'heads_out'))
_MLP = (('wi_0', 'T'), ('wi_1', 'T'), ('wo', 'T'))
# Transposed (torch [out, in] vs our [in, out]): q/k/v/o, wi_0/wi_1/wo, lm_head, relative_attention_bias.
# HF name -> our activation name, and back.
_ACT_TO_HF = {'gelu_tanh': 'gated-gelu', 'silu': 'gated-silu', 'gelu': 'gated-gelu_python'}
_ACT_FROM_HF = {'gelu_new': 'gelu_tanh', 'gelu_pytorch_tanh': 'gelu_tanh', 'silu': 'silu',
                'swish': 'silu', 'gelu': 'gelu', 'gelu_python': 'gelu'}


def _stack_rules(cfg: EncDecConfig, stack: str) -> list[Rule]:
  enc = stack == 'encoder'
  n = cfg.num_encoder_layers if enc else cfg.num_decoder_layers
  out = []
  for i in range(n):
    p = f'{stack}.block.{i}.layer'
    lp = lambda *rest: layer_param(cfg.scan_layers, (stack,), i, rest)
    norm_attn = 'attention_norm' if enc else 'self_attention_norm'
    self_attn = 'attention' if enc else 'self_attention'
    out.append(Rule(f'{p}.0.layer_norm.weight', *lp(norm_attn, 'scale'), 'copy'))
    for hf, ours, kind in _ATTN:
      out.append(Rule(f'{p}.0.SelfAttention.{hf}.weight', *lp(self_attn, ours, 'kernel'), kind))
    if i == 0:
      out.append(Rule(f'{p}.0.SelfAttention.relative_attention_bias.weight',
                      (stack, 'relpos_bias', 'rel_embedding'), None, 'T'))
    m = 1
    if not enc:
      out.append(Rule(f'{p}.1.layer_norm.weight', *lp('cross_attention_norm', 'scale'), 'copy'))
      for hf, ours, kind in _ATTN:
        out.append(Rule(f'{p}.1.EncDecAttention.{hf}.weight', *lp('cross_attention', ours, 'kernel'),
                        kind))
      m = 2
    out.append(Rule(f'{p}.{m}.layer_norm.weight', *lp('mlp_norm', 'scale'), 'copy'))
    for hf, kind in _MLP:
      out.append(Rule(f'{p}.{m}.DenseReluDense.{hf}.weight', *lp('mlp', hf, 'kernel'), kind))
  out.append(Rule(f'{stack}.final_layer_norm.weight', (stack, 'final_norm', 'scale'), None, 'copy'))
  return out


def rules(cfg: EncDecConfig, head_from_shared: bool = False) -> list[Rule]:
  """head_from_shared: import only, for checkpoints whose (unscaled) head is `shared.weight`."""
  out = [Rule('shared.weight', ('token_embed', 'embedding'), None, 'copy')]
  out += _stack_rules(cfg, 'encoder') + _stack_rules(cfg, 'decoder')
  if not cfg.tie_embeddings:
    out.append(Rule('shared.weight' if head_from_shared else 'lm_head.weight', ('lm_head', 'kernel'),
                    None, 'T'))
  return out


def check_exportable(cfg: EncDecConfig, arch: str = 't5') -> None:
  if arch not in ARCHITECTURES:
    raise ConversionError(f'--hf_arch={arch!r}; choose one of {sorted(ARCHITECTURES)}')
  if cfg.mlp_activation not in _ACT_TO_HF:
    raise ConversionError(f'EncDecConfig.mlp_activation={cfg.mlp_activation!r} has no HF T5 equivalent')
  if cfg.tie_embeddings and arch == 'mt5':
    raise ConversionError('EncDecConfig.tie_embeddings=True needs the d_model**-0.5 output scaling that '
                          'only T5ForConditionalGeneration applies: export with --hf_arch=t5')


def hf_config(cfg: EncDecConfig, torch_dtype: str, arch: str = 't5') -> dict:
  hf = hf_library.transformers()
  cls = hf.T5Config if arch == 't5' else hf.MT5Config
  c = cls(vocab_size=cfg.vocab_size, d_model=cfg.embed_dim, d_kv=cfg.head_dim, d_ff=cfg.mlp_dim,
          num_layers=cfg.num_encoder_layers, num_decoder_layers=cfg.num_decoder_layers,
          num_heads=cfg.num_heads, relative_attention_num_buckets=cfg.relative_attention_num_buckets,
          relative_attention_max_distance=cfg.relative_attention_max_distance,
          dropout_rate=cfg.dropout_rate, layer_norm_epsilon=cfg.rms_norm_eps,
          feed_forward_proj=_ACT_TO_HF[cfg.mlp_activation], pad_token_id=0, eos_token_id=1,
          decoder_start_token_id=0)
  d = c.to_dict()
  # The tying trap: the config class forces True; what we write is what from_pretrained reads.
  d['tie_word_embeddings'] = bool(cfg.tie_embeddings)
  d['scale_decoder_outputs'] = bool(cfg.tie_embeddings)
  d['architectures'] = [ARCHITECTURES[arch]]
  d['dtype'] = torch_dtype
  return d


HANDLED = frozenset({
    'vocab_size', 'd_model', 'd_kv', 'd_ff', 'num_layers', 'num_decoder_layers', 'num_heads',
    'relative_attention_num_buckets', 'relative_attention_max_distance', 'dropout_rate',
    'layer_norm_epsilon', 'feed_forward_proj', 'dense_act_fn', 'is_gated_act', 'tie_word_embeddings',
    'scale_decoder_outputs', 'is_encoder_decoder'})
IGNORED = frozenset({
    'architectures', 'model_type', 'transformers_version', '_name_or_path', 'torch_dtype', 'dtype',
    'use_cache', 'initializer_factor', 'classifier_dropout', 'is_decoder', 'tokenizer_class',
    'gradient_checkpointing', 'output_past', 'task_specific_params',
    'n_positions',  # T5 v1.0 configs carry it; relative positions have no table
    'bos_token_id', 'eos_token_id', 'pad_token_id', 'decoder_start_token_id'})


def lm_head_semantics(d: dict, has_lm_head: bool) -> tuple[bool, bool]:
  """(tie_embeddings, head_from_shared) for our config, from what HF would compute."""
  scale = d.get('scale_decoder_outputs', d.get('tie_word_embeddings', True) is not False)
  if d.get('model_type') == 'mt5':
    scale = False  # MT5ForConditionalGeneration never rescales
  if has_lm_head and not scale:
    return False, False   # T5 v1.1 / mT5 as published: untied head
  if not has_lm_head and scale:
    return True, False    # T5 v1.0-style tied head with d_model**-0.5 rescaling
  if not has_lm_head and not scale:
    return False, True    # what transformers 5 saves for a v1.1 config: unscaled head = shared
  raise ConversionError('T5 checkpoint has a separate lm_head.weight but scale_decoder_outputs/'
                        'tie_word_embeddings say the head is the rescaled shared embedding: ambiguous')


def from_hf_config(d: dict, has_lm_head: bool, **overrides) -> tuple[EncDecConfig, bool]:
  """(our config, head_from_shared)."""
  hf = hf_library.transformers()
  model_type = d.get('model_type')
  if model_type not in MODEL_TYPES:
    raise ConversionError(f'model_type={model_type!r} is not a T5/mT5 model')
  defaults = (hf.T5Config if model_type == 't5' else hf.MT5Config)().to_dict()
  check_fields(d, defaults, HANDLED, IGNORED, 'T5')
  proj = d.get('feed_forward_proj', defaults['feed_forward_proj'])
  parts = proj.split('-')
  if parts[0] != 'gated' or len(parts) != 2:
    raise ConversionError(f'T5 config field feed_forward_proj={proj!r} is not supported: only gated '
                          "MLPs (T5 v1.1 / mT5, 'gated-gelu') are")
  act = 'gelu_new' if proj == 'gated-gelu' else parts[1]
  if act not in _ACT_FROM_HF:
    raise ConversionError(f'T5 config field feed_forward_proj={proj!r}: activation {act!r} is not '
                          f'supported ({sorted(_ACT_FROM_HF)})')
  if d.get('is_encoder_decoder', True) is not True:
    raise ConversionError('T5 config field is_encoder_decoder=false is not supported')
  tie, head_from_shared = lm_head_semantics(d, has_lm_head)
  fields = dict(
      vocab_size=d['vocab_size'], embed_dim=d['d_model'], num_encoder_layers=d['num_layers'],
      num_decoder_layers=d.get('num_decoder_layers') or d['num_layers'], num_heads=d['num_heads'],
      head_dim=d['d_kv'], mlp_dim=d['d_ff'],
      relative_attention_num_buckets=d.get('relative_attention_num_buckets', 32),
      relative_attention_max_distance=d.get('relative_attention_max_distance', 128),
      rms_norm_eps=d.get('layer_norm_epsilon', 1e-6), mlp_activation=_ACT_FROM_HF[act],
      tie_embeddings=tie, dropout_rate=d.get('dropout_rate', 0.0))
  fields.update(overrides)
  names = {f.name for f in dataclasses.fields(EncDecConfig)}
  return EncDecConfig(**{k: v for k, v in fields.items() if k in names}), head_from_shared


# HF tensors that duplicate `shared.weight` (tied in HF; older checkpoints saved them).
IGNORED_TENSORS = ('encoder.embed_tokens.weight', 'decoder.embed_tokens.weight',
                   'decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight')
