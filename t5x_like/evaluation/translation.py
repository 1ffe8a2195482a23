"""Translation quality of interlinear / code-switching models: decode, then score with sacreBLEU.

Decoding is `t5x_like.decoding` (greedy_decode / beam_search, both families); this module only builds
the prompts, calls it and scores. BLEU and chrF are sacreBLEU's corpus scores with default settings
(13a tokenization for BLEU), whose signatures are returned with the numbers so they can be quoted.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence


def score(hypotheses: Sequence[str], references: Sequence[str]) -> dict:
  """Corpus BLEU and chrF of hypotheses against one reference each."""
  import sacrebleu
  if len(hypotheses) != len(references):
    raise ValueError(f'{len(hypotheses)} hypotheses for {len(references)} references')
  bleu = sacrebleu.metrics.BLEU()
  chrf = sacrebleu.metrics.CHRF()
  b = bleu.corpus_score(list(hypotheses), [list(references)])
  c = chrf.corpus_score(list(hypotheses), [list(references)])
  return {'bleu': float(b.score), 'chrf': float(c.score), 'bleu_signature': str(bleu.get_signature()),
          'chrf_signature': str(chrf.get_signature()), 'num_sentences': len(hypotheses)}


def translate_and_score(decode: Callable[[Sequence[str]], Sequence[str]], sources: Sequence[str],
                        references: Sequence[str], *, prompt: Optional[str] = None,
                        examples: int = 3) -> dict:
  """`decode` maps prompts to hypotheses (a wrapper around t5x_like.decoding); `prompt` is a format
  string with {source} (e.g. '{source} <2de>') or None for the bare source. A few examples are kept
  with the scores, so a report can show what the numbers mean."""
  prompts = [prompt.format(source=s) if prompt else s for s in sources]
  hyps = [h.strip() for h in decode(prompts)]
  out = score(hyps, references)
  out['examples'] = [{'source': s, 'hypothesis': h, 'reference': r}
                     for s, h, r in list(zip(sources, hyps, references))[:examples]]
  return out
