"""Hugging Face's `transformers` and `tokenizers`, the one place the conversion imports them.

The conversion uses their config classes (LlamaConfig, T5Config, MT5Config, GenerationConfig: the
defaults an HF config is checked against, and the configs written) and their SentencePiece ->
tokenizer.json converter. They come with the `hf` extra, not the core install, so each is imported on
first use: without them a conversion stops with one `error:` line naming the extra, before it writes
anything (the configs are built before the weights), and the rest of the project never loads them.
"""
from __future__ import annotations

import contextlib
import types

from t5x_like.convert.mapping import ConversionError


@contextlib.contextmanager
def _needed():
  """An ImportError inside becomes the one-line ConversionError that names the extra."""
  try:
    yield
  except ImportError as e:
    raise ConversionError(f'converting checkpoints to or from Hugging Face needs '
                          f'{e.name or "transformers"}, which the hf extra installs '
                          f"(pip install -e '.[hf]'): {e}") from None


def transformers() -> types.ModuleType:
  """The `transformers` package (its classes load on first attribute access)."""
  with _needed():
    import transformers
  return transformers


def spm_converter() -> type:
  """transformers' SpmConverter, which builds a tokenizer.json from a SentencePiece proto."""
  with _needed():
    from transformers.convert_slow_tokenizer import SpmConverter
  return SpmConverter


def sentencepiece_model_proto() -> type:
  """The SentencePiece ModelProto class, from the protobuf module transformers' converter reads."""
  with _needed():
    from transformers.convert_slow_tokenizer import import_protobuf
  return import_protobuf().ModelProto


def tokenizers() -> types.ModuleType:
  """The `tokenizers` package that tokenizer.json is built with."""
  with _needed():
    import tokenizers
  return tokenizers
