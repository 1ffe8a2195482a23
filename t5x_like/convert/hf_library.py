"""Hugging Face's `transformers` and `tokenizers`, the one place the conversion imports them.

The conversion uses their config classes (LlamaConfig, T5Config, MT5Config, GenerationConfig: the
defaults an HF config is checked against, and the configs written) and their SentencePiece ->
tokenizer.json converter. They come with the `hf` extra, not the core install, so each is imported on
first use: without them a conversion stops with one `error:` line naming the extra, before it writes
anything (the configs are built before the weights), and the rest of the project never loads them.
"""
from __future__ import annotations

import types

from t5x_like.convert.mapping import ConversionError


def _missing(e: ImportError) -> ConversionError:
  return ConversionError(f'converting checkpoints to or from Hugging Face needs {e.name or "transformers"}, '
                         f"which the hf extra installs (pip install -e '.[hf]'): {e}")


def transformers() -> types.ModuleType:
  """The `transformers` package (its classes load on first attribute access)."""
  try:
    import transformers
  except ImportError as e:
    raise _missing(e) from None
  return transformers


def spm_converter() -> type:
  """transformers' SpmConverter, which builds a tokenizer.json from a SentencePiece proto."""
  try:
    from transformers.convert_slow_tokenizer import SpmConverter
  except ImportError as e:
    raise _missing(e) from None
  return SpmConverter


def sentencepiece_model_proto() -> type:
  """The SentencePiece ModelProto class, from the protobuf module transformers' converter reads."""
  try:
    from transformers.convert_slow_tokenizer import import_protobuf
  except ImportError as e:
    raise _missing(e) from None
  return import_protobuf().ModelProto


def tokenizers() -> types.ModuleType:
  """The `tokenizers` package that tokenizer.json is built with."""
  try:
    import tokenizers
  except ImportError as e:
    raise _missing(e) from None
  return tokenizers
