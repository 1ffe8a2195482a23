"""Checkpoint conversion to and from Hugging Face `transformers` (see docs/CONVERT.md).

  python -m t5x_like.convert to-hf --model_dir DIR [--step N] --out OUT
  python -m t5x_like.convert from-hf --hf DIR --out MODEL_DIR

llama.py / t5.py hold each family's weight mapping and HF-config handling; mapping.py the layout kinds;
safetensors_stream.py the streaming reader/writer; tokenizer.py the SentencePiece -> tokenizer.json step;
hf_library.py imports transformers and tokenizers (the `hf` extra) for all of them.
"""
