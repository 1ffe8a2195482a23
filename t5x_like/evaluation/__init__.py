"""Evaluation metrics, one small module each; `t5x_like/eval.py` is the command line that runs them.

- hidden_states: run a model and read every block's output (embedding output first);
- batches:       same text in every cloned language, as windows or single sentences;
- text_sources:  line-aligned text files, and FLORES-200 read straight from its tar;
- perplexity:    per-language perplexity, optionally on the last n positions of each window;
- alignment:     hidden-state and gradient alignment between a language and its clone, with controls;
- mexa:          MEXA sentence-retrieval alignment (cisnlp/Mexa);
- token_efficiency: power-law fit of monolingual runs -> tokens-equivalent gain per language;
- translation:   greedy / beam decoding scored with sacreBLEU (BLEU, chrF).
"""
