"""The run's SentencePiece vocabulary as a Hugging Face fast tokenizer (tokenizer.json), and back.

Ids follow the run's vocabulary exactly (T5 convention: pad 0, eos 1, unk 2): the tokenizer is built from
the SentencePiece proto with transformers' `SpmConverter.build_tokenizer_from_spm_proto`, which follows the
model's own normalizer spec. seqio's extra ids (`<extra_id_0>` is the last id) are appended as special
tokens. The post-processor reproduces the training-time input: decoder-only `tokenizer(text)` is
`[0] + encode(text)` (seqio's DecoderFeatureConverter shifts targets right, so id 0 starts every
document the model saw; the tokenizer's BOS is that id-0 piece), encoder inputs are `encode(text) + [eos]`
(seqio's `add_eos`).

Cloned vocabularies (tasks/cloned.py; Schäfer et al. 2024) get a tokenizer with `base_vocab_size x
num_languages` entries. Language 0 is the base vocabulary; the copy of base token t for language k >= 1 is
id t + k*V with piece string `{piece}⟦k⟧`, so every cloned token is distinct and visible in
`convert_ids_to_tokens`, and the decoder strips the marker. Every language's copy of a special token
(eos, unk, extra ids) is itself special, so `decode(..., skip_special_tokens=True)` treats all languages
alike. Plain `tokenizer(text)` encodes as language 0; `cloned_language.py` (written next to the
tokenizer) maps ids to language k — see `encode_as_language`.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from typing import Optional

from t5x_like.convert import hf_library

MARKER = '⟦{k}⟧'
PAD_ID, EOS_ID = 0, 1
CLONED_TEMPLATE = os.path.join(os.path.dirname(__file__), 'cloned_language_template.py')


def _proto(spm_path: str):
  m = hf_library.sentencepiece_model_proto()()
  with open(spm_path, 'rb') as f:
    m.ParseFromString(f.read())
  return m


def _build(proto, vocab: list[tuple[str, float]], specials: list[str], *, family: str,
           strip_markers: bool):
  tk = hf_library.tokenizers()
  tok = hf_library.spm_converter().build_tokenizer_from_spm_proto(proto, vocab, legacy=False)
  if tok is None:
    raise ValueError('unsupported SentencePiece model type (need unigram)')
  if strip_markers:
    # Marker first, so the rest of the decoder sees the base piece.
    tok.decoder = tk.decoders.Sequence([tk.decoders.Replace(tk.Regex('⟦[0-9]+⟧'), ''), tok.decoder])
  tok.add_special_tokens([tk.AddedToken(s, special=True, normalized=False) for s in specials])
  pad_piece, eos_piece = vocab[PAD_ID][0], vocab[EOS_ID][0]
  if family == 'encdec':
    # Encoder inputs end with EOS, as seqio's `add_eos=True` features do.
    tok.post_processor = tk.processors.TemplateProcessing(
        single=['$A', eos_piece], pair=['$A', eos_piece, '$B', eos_piece],
        special_tokens=[(eos_piece, EOS_ID)])
  else:
    # Id 0 first: the decoder input the model was trained on ([0, t1, ..., tn-1], targets shifted right).
    tok.post_processor = tk.processors.TemplateProcessing(
        single=[pad_piece, '$A'], pair=[pad_piece, '$A', '$B'], special_tokens=[(pad_piece, PAD_ID)])
  return tok


def clone_ids(meta: dict, base_vocab_size: int) -> list[int]:
  """Base ids that get a copy per language: vocabulary.json's `cloned_ids` (written by tasks/vocab.py),
  else the recipe of tasks/cloned.py: the first int(frac_clone * V) ids of range(V) shuffled by
  random.Random(seed), pad 0 excluded."""
  if 'cloned_ids' in meta:
    return sorted(int(i) for i in meta['cloned_ids'])
  ids = list(range(base_vocab_size))
  random.Random(meta.get('seed', 0)).shuffle(ids)
  return sorted(i for i in ids[:int(meta['frac_clone'] * base_vocab_size)] if i != 0)


def write_hf_tokenizer(vocab_dir: str, out: str, *, family: str, model_vocab_size: int) -> dict:
  """Writes tokenizer.json / tokenizer_config.json (+ the spm file) to `out`; returns notes for the user."""
  with open(os.path.join(vocab_dir, 'vocabulary.json')) as f:
    meta = json.load(f)
  spm_path = os.path.join(vocab_dir, 'spm.model')
  proto = _proto(spm_path)
  pieces = [(p.piece, p.score) for p in proto.pieces]
  extra = int(meta.get('extra_ids', 0) or 0)
  pieces += [(f'<extra_id_{i}>', 0.0) for i in range(extra - 1, -1, -1)]
  base = len(pieces)
  pad, eos, unk = (proto.pieces[i].piece for i in (0, 1, 2))
  specials = [pad, eos, unk] + [f'<extra_id_{i}>' for i in range(extra)]
  notes: dict = {'base_vocab_size': base, 'eos_token_ids': [EOS_ID]}
  vtype = meta.get('type', 'sentencepiece')
  if vtype == 'sentencepiece':
    vocab = pieces
  elif vtype == 'cloned':
    n = int(meta['num_languages'])
    if meta.get('base_vocab_size', base) != base:
      raise ValueError(f"{vocab_dir}/vocabulary.json: base_vocab_size={meta['base_vocab_size']} but "
                       f'spm.model + extra ids give {base}')
    cloned = clone_ids(meta, base)
    vocab = list(pieces)
    is_cloned = set(cloned)
    for k in range(1, n):
      for t, (piece, score) in enumerate(pieces):
        # Unused slots still need unique strings; their -1e9 score keeps them out of any segmentation.
        vocab.append((piece + MARKER.format(k=k), score) if t in is_cloned
                     else (f'<unused_{t + k * base}>', -1e9))
    # Each language's copy of a special token is special too (decode skips it, encode never splits it),
    # and each language's EOS ends generation.
    special_set = set(specials)
    special_base = [t for t, (piece, _) in enumerate(pieces) if piece in special_set]
    specials = specials + [vocab[t + k * base][0] for k in range(1, n) for t in special_base
                           if t in is_cloned]
    notes['eos_token_ids'] = [EOS_ID] + [EOS_ID + k * base for k in range(1, n) if EOS_ID in is_cloned]
    notes.update(num_languages=n, cloned_ids=len(cloned))
    with open(os.path.join(out, 'cloned_vocabulary.json'), 'w') as f:
      json.dump({**meta, 'base_vocab_size': base, 'marker': MARKER, 'cloned_ids': cloned}, f)
    shutil.copyfile(CLONED_TEMPLATE, os.path.join(out, 'cloned_language.py'))
    with open(os.path.join(out, 'README_cloned_languages.md'), 'w') as f:
      f.write(CLONED_README.format(n=n, V=base, frac=meta['frac_clone'], c=len(cloned)))
  else:
    raise ValueError(f"{vocab_dir}/vocabulary.json: cannot export vocabulary type {vtype!r}")
  if len(vocab) > model_vocab_size:
    raise ValueError(f'the vocabulary has {len(vocab)} entries but the model only {model_vocab_size}')
  tok = _build(proto, vocab, specials, family=family, strip_markers=vtype == 'cloned')
  fast = hf_library.transformers().PreTrainedTokenizerFast(
      tokenizer_object=tok, pad_token=pad, eos_token=eos, unk_token=unk,
      bos_token=pad if family == 'decoder' else None,
      additional_special_tokens=specials[3:] or None,
      model_max_length=int(1e30), padding_side='right' if family == 'encdec' else 'left')
  fast.save_pretrained(out)
  # The SentencePiece model itself, under the name Llama / T5 tokenizers use, so `from-hf` (and anyone
  # else) can get the exact vocabulary back.
  shutil.copyfile(spm_path, os.path.join(out, 'tokenizer.model' if family == 'decoder' else 'spiece.model'))
  notes['vocab_entries'] = len(vocab)
  return notes


def find_spm(hf_dir: str) -> Optional[str]:
  for name in ('tokenizer.model', 'spiece.model', 'sentencepiece.bpe.model', 'spm.model'):
    if os.path.exists(os.path.join(hf_dir, name)):
      return os.path.join(hf_dir, name)
  return None


CLONED_README = """# Cloned-language tokenizer

This model was trained on {n} cloned copies of one language (Schäfer et al. 2024): a fraction {frac}
({c} ids) of the base vocabulary of V = {V} tokens has a copy for each language k = 1..{n_minus}.
Language 0 is the base vocabulary; language k's copy of base token t has id `t + k*V` and the piece
string `<piece>⟦k⟧`. Tokens that are not cloned keep their base id in every language. Ids `t + k*V` of
uncloned tokens are unused (`<unused_ID>`).

`tokenizer(text)` encodes as language 0, after id 0: every training input started with id 0 (the
targets shifted right), so the tokenizer puts it first. Each language's copy of a special token
(`</s>⟦k⟧`, `<unk>⟦k⟧`, ...) is special, so `decode(ids, skip_special_tokens=True)` reads the same in
every language, and generation stops at any language's `</s>` (generation_config.json lists them all).
To encode as language k:

```python
from transformers import AutoTokenizer
import sys; sys.path.insert(0, OUT)           # the directory this README is in
from cloned_language import encode_as_language, language_of
tok = AutoTokenizer.from_pretrained(OUT)
ids = encode_as_language(tok, "A man rides a bike.", k=1)   # list of ints
tok.decode(ids, skip_special_tokens=True)   # the text again (markers are stripped)
tok.convert_ids_to_tokens(ids)               # shows the markers
language_of(tok, ids)    # per id: its language, or None for tokens shared by all languages
```
""".replace('{n_minus}', '{n} - 1')
