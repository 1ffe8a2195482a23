"""Model families. Each exposes a frozen config dataclass and a Flax module whose
`__call__(batch, deterministic)` takes a feature-converted batch and returns fp32 logits
(`output='hidden'`: the final hidden states, which `output_kernel(params)` maps to the logits)."""
from t5x_like.models.decoder import Decoder, DecoderConfig, RopeScaling
from t5x_like.models.encdec import EncDecConfig, EncoderDecoder


def build_model(config):
  """The Flax module for a model config."""
  if isinstance(config, DecoderConfig):
    return Decoder(config)
  if isinstance(config, EncDecConfig):
    return EncoderDecoder(config)
  raise TypeError(f'unknown model config type {type(config).__name__}')
