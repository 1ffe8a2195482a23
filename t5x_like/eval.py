"""Evaluate a checkpoint: `python -m t5x_like.eval --model_dir D [--step N | --all_steps] --metrics ...`.

Metrics (comma separated, see t5x_like/evaluation/ for what each one measures):
  ppl    per-language perplexity on the evaluation text (+ on the last n positions: --last_n)
  align  layer-wise hidden-state alignment of language 0 and each clone, with controls
  grad   gradient alignment of language 0 and each clone, with controls
  mexa   MEXA of pivot sentences against each target set (--mexa_pivot / --mexa_target)
  teff   token efficiency against monolingual runs (--baseline_dir: runs evaluated with ppl at >= 3 steps)
  bleu   BLEU / chrF of decoded translations (--src_file / --ref_file; needs t5x_like.decoding)
`--init_control` also computes align and mexa for an untrained model of the same config: whatever
structure that control shows (shared positions, sentence length) is not learned alignment.

Results: MODEL_DIR/eval/<step>/results.json (merged: metrics evaluated later are added, the ones asked for
again are replaced) and TensorBoard scalars in MODEL_DIR/eval/suite. If MODEL_DIR/run.json exists
(written by launch/sweep.py) it supplies the evaluation text, sequence length and the language mix the
run was trained on (for tokens seen per language); flags override it.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Optional, Sequence

import jax
import numpy as np

from t5x_like import checkpointing, compilation_cache, decoding, partitioning, provenance, run_dir
from t5x_like.evaluation import alignment, batches, mexa, perplexity, text_sources, translation
from t5x_like.evaluation import token_efficiency as te
from t5x_like.evaluation.results import (checkpoint_steps, read_results, read_run_info, scalars,
                                         write_results)
from t5x_like.metrics import SummaryWriter  # TensorBoard files without TensorFlow
from t5x_like.models import build_model

METRICS = ('ppl', 'align', 'grad', 'mexa', 'teff', 'bleu')


@dataclasses.dataclass
class EvalOptions:
  metrics: tuple = ('ppl',)
  eval_files: tuple = ()
  sequence_length: Optional[int] = None
  window_mode: str = 'stream'   # as tasks.cloned trains: lines joined by EOS, cut into windows
  max_windows: int = 256
  batch_size: int = 16
  last_n: Optional[int] = None
  align_windows: int = 64
  grad_batches: int = 4
  mexa_pivot: Optional[str] = None
  mexa_targets: tuple = ()
  mexa_n: int = 100
  flores_tar: Optional[str] = None
  baseline_dirs: tuple = ()
  init_control: bool = False
  src_file: Optional[str] = None
  ref_file: Optional[str] = None
  prompt: Optional[str] = None
  beam_size: int = 1
  max_decode_length: int = 128


def write_tensorboard(model_dir: str, step: int, results: dict) -> None:
  w = SummaryWriter(os.path.join(model_dir, 'eval', 'suite'))
  for k, v in scalars(results).items():
    w.scalar(k, v, step)
  w.flush()
  w.close()


# --- the language mix a run saw ----------------------------------------------------------------------

def tokens_seen(run_info: dict, step: int, num_languages: int) -> Optional[list[float]]:
  """Expected tokens of each language after `step` steps (nominal batch x length per step)."""
  need = ('batch_size', 'sequence_length', 'train_steps')
  if not all(k in run_info for k in need):
    return None
  per_step = run_info['batch_size'] * run_info['sequence_length']
  fr = te.language_fractions(run_info.get('p_clone', 0.0), run_info.get('schedule'), step,
                             run_info['train_steps'], num_languages)
  return [f * per_step * step for f in fr]


# --- evaluation --------------------------------------------------------------------------------------

def _eval_length(opts: EvalOptions, run_info: dict) -> int:
  return opts.sequence_length or run_info.get('sequence_length') or 128


def _windows(vocab, opts: EvalOptions, length: int):
  if not opts.eval_files:
    raise ValueError('no evaluation text: pass --eval_files (or evaluate a run made by launch/sweep.py, '
                     'whose run.json names its validation files)')
  lines = []
  for f in opts.eval_files:
    lines.extend(l for l in text_sources.read_lines(f, opts.flores_tar) if l)
  ids = [batches.encode_base(vocab, l) for l in lines]
  return batches.pack_windows(ids, length, mode=opts.window_mode, max_windows=opts.max_windows)


def _subset(windows: dict, n: int) -> dict:
  return {k: v[:n] for k, v in windows.items()}


def _mexa_sets(opts: EvalOptions, num_langs: int) -> tuple[tuple, list]:
  """(pivot spec, target specs). Default for a cloned model: the pivot text in language 0 against the
  same text in every clone; FLORES English when its tar is there, else the evaluation text."""
  pivot = opts.mexa_pivot
  if pivot is None:
    tar = opts.flores_tar or text_sources.DEFAULT_FLORES_TAR
    if os.path.exists(tar):
      pivot = 'flores:eng_Latn'
    elif opts.eval_files:
      pivot = opts.eval_files[0]
    else:
      raise ValueError('mexa: no pivot text (pass --mexa_pivot)')
  targets = list(opts.mexa_targets)
  if not targets:
    src, _ = text_sources.parse_spec(pivot)
    targets = [f'{src}@{k}' for k in range(1, num_langs)]
    if not targets:
      raise ValueError('mexa: the model has one language; pass --mexa_target (e.g. flores:deu_Latn)')
  return pivot, targets


# (pivot spec, target specs, {spec: lines}): the line-aligned texts of MEXA.
MexaTexts = tuple[str, list[str], dict[str, list[str]]]


def mexa_texts(opts: EvalOptions, num_langs: int) -> MexaTexts:
  """The MEXA pivot, its targets and {spec: lines} of each: line-aligned texts."""
  pivot, targets = _mexa_sets(opts, num_langs)
  texts = {spec: text_sources.read_lines(text_sources.parse_spec(spec)[0], opts.flores_tar,
                                         limit=opts.mexa_n) for spec in [pivot, *targets]}
  n = len(texts[pivot])
  for t in targets:
    if len(texts[t]) != n:
      raise ValueError(f'mexa: {t} has {len(texts[t])} lines, the pivot {pivot} has {n}: files must '
                       'be line-aligned')
  return pivot, targets, texts


def _mexa(model, params, vocab, opts: EvalOptions, texts: MexaTexts) -> dict:
  pivot, targets, lines = texts
  def embed(spec):
    return mexa.sentence_embeddings(model, params, vocab, lines[spec],
                                    text_sources.parse_spec(spec)[1],
                                    batch_size=min(opts.batch_size * 2, 64))
  e_pivot, n = embed(pivot), len(lines[pivot])
  # 'cut': sentences longer than the model's own limit, per text (cisnlp/Mexa cuts none).
  out = {'pivot': pivot, 'n': n, 'chance': 1.0 / n, 'cut': {pivot: e_pivot['cut']}, 'targets': {}}
  for t in targets:
    e_t = embed(t)
    out['cut'][t] = e_t['cut']
    out['targets'][t] = mexa.mexa_by_layer(e_pivot, e_t)
  return out


@dataclasses.dataclass
class EvalInputs:
  """The texts the asked-for metrics read besides the checkpoint. They do not depend on the step, so
  `read_inputs` reads and checks them once, before any checkpoint is read; None: not asked for."""
  windows: Optional[dict] = None                    # ppl, align, grad, teff
  mexa: Optional[MexaTexts] = None                  # mexa
  translation: Optional[tuple[list, list]] = None   # bleu: (sources, references)


def read_inputs(opts: EvalOptions, vocab, run_info: dict) -> EvalInputs:
  asked = set(opts.metrics)
  return EvalInputs(
      windows=(_windows(vocab, opts, _eval_length(opts, run_info))
               if {'ppl', 'align', 'grad', 'teff'} & asked else None),
      mexa=mexa_texts(opts, batches.num_languages(vocab)) if 'mexa' in asked else None,
      translation=translation_pairs(opts) if 'bleu' in asked else None)


def make_decoder(model, params, vocab, *, batch_size: int = 16, beam_size: int = 1,
                 max_new_tokens: int = 128):
  """prompts -> hypotheses through t5x_like.decoding (greedy when beam_size == 1, else beam search).

  Decoder-only models continue `[0] + prompt` (no EOS appended); encoder-decoders read it with its
  EOS, as the tasks feed them. Generation stops at EOS; the text is decoded from the new tokens only.
  """
  cfg = model.config

  def decode(prompts):
    hyps = []
    for start in range(0, len(prompts), batch_size):
      part = list(prompts[start:start + batch_size])
      # As in training (and the exported tokenizer): decoder prompts start with id 0, encoder inputs end
      # with EOS.
      ids = [batches.encode_base(vocab, p) + [batches.EOS_ID] if cfg.family == 'encdec'
             else [0] + batches.encode_base(vocab, p) for p in part]
      short = batch_size - len(ids)
      ids += [[batches.EOS_ID]] * short  # constant batch: one compile
      tokens = np.zeros((len(ids), max(len(x) for x in ids)), np.int32)
      for i, x in enumerate(ids):
        tokens[i, :len(x)] = x
      if beam_size > 1:
        out, _ = decoding.beam_search(params, cfg, tokens, max_new_tokens=max_new_tokens,
                                      beam_size=beam_size)
      else:
        out = decoding.greedy_decode(params, cfg, tokens, max_new_tokens=max_new_tokens)
      for row in np.asarray(out)[:len(part)]:
        row = [int(t) for t in row]
        row = row[:row.index(batches.EOS_ID)] if batches.EOS_ID in row else row
        hyps.append(vocab.decode([t for t in row if t > 0]))
    return hyps
  return decode


def evaluate(model, params, vocab, step: int, opts: EvalOptions, run_info: dict,
             inputs: EvalInputs) -> dict:
  """All asked-for metrics of one checkpoint -> a results dict (see the module doc), on the texts of
  `read_inputs`."""
  num_langs = batches.num_languages(vocab)
  length = _eval_length(opts, run_info)
  res: dict = {'step': int(step), 'num_languages': num_langs,
               'evaluated_at': time.strftime('%Y-%m-%d %H:%M:%S'),
               'source_commit': provenance.source_commit(),
               'settings': run_info.get('settings', {})}
  seen = tokens_seen(run_info, step, num_langs)
  if seen is not None:
    res['tokens_seen'] = {f'lang{k}': v for k, v in enumerate(seen)}
  windows = inputs.windows
  if windows is not None:
    res['eval_data'] = {'files': list(opts.eval_files), 'sequence_length': length,
                        'window_mode': opts.window_mode,
                        'num_windows': int(windows['decoder_input_tokens'].shape[0])}
  if 'ppl' in opts.metrics or 'teff' in opts.metrics:
    res['perplexity'] = {
        f'lang{k}': perplexity.perplexity(model, params, batches.in_language(vocab, windows, k),
                                          batch_size=opts.batch_size, last_n=opts.last_n)
        for k in range(num_langs)}
  controls = {}
  init_params = None
  if opts.init_control and {'align', 'mexa'} & set(opts.metrics):
    init_params = _init_params(model, params)
  if 'align' in opts.metrics:
    if num_langs < 2:
      raise ValueError('align: the model vocabulary has one language')
    sub = _subset(windows, opts.align_windows)
    res['alignment'] = {f'lang{k}': alignment.hidden_alignment(model, params, vocab, sub, k,
                                                               batch_size=opts.batch_size)
                        for k in range(1, num_langs)}
    if init_params is not None:
      controls['alignment'] = {f'lang{k}': alignment.hidden_alignment(
          model, init_params, vocab, sub, k, batch_size=opts.batch_size) for k in range(1, num_langs)}
  if 'grad' in opts.metrics:
    if num_langs < 2:
      raise ValueError('grad: the model vocabulary has one language')
    res['gradient_alignment'] = {f'lang{k}': alignment.gradient_alignment(
        model, params, vocab, windows, k, batch_size=opts.batch_size, num_batches=opts.grad_batches)
        for k in range(1, num_langs)}
  if 'mexa' in opts.metrics:
    res['mexa'] = _mexa(model, params, vocab, opts, inputs.mexa)
    if init_params is not None:
      controls['mexa'] = _mexa(model, init_params, vocab, opts, inputs.mexa)
  if controls:
    res['init_control'] = controls
  if 'teff' in opts.metrics:
    res['token_efficiency'] = _teff(res, opts)
  if 'bleu' in opts.metrics:
    src, ref = inputs.translation
    decode = make_decoder(model, params, vocab, batch_size=opts.batch_size,
                          beam_size=opts.beam_size, max_new_tokens=opts.max_decode_length)
    res['translation'] = translation.translate_and_score(decode, src, ref, prompt=opts.prompt)
    res['translation']['beam_size'] = opts.beam_size
  return res


def translation_pairs(opts: EvalOptions) -> tuple[list[str], list[str]]:
  """The sources and references of `bleu`, one reference per source line."""
  if not (opts.src_file and opts.ref_file):
    raise ValueError('bleu needs --src_file and --ref_file')
  src = text_sources.read_lines(opts.src_file, opts.flores_tar)
  ref = text_sources.read_lines(opts.ref_file, opts.flores_tar)
  if len(src) != len(ref):
    raise ValueError(f'bleu needs one reference per source line: --src_file {opts.src_file} has '
                     f'{len(src)} lines, --ref_file {opts.ref_file} has {len(ref)}')
  return src, ref


def _init_params(model, params):
  """Freshly initialised parameters of the same model (seed 0), laid out like `params`."""
  fresh = partitioning.unbox(model.init(jax.random.key(0), run_dir._dummy_batch(model.config))['params'])  # pylint: disable=protected-access
  return jax.tree.map(lambda p, f: f.astype(p.dtype), params, fresh)


def _ppl_of(r: dict) -> float:
  return r['last_n']['perplexity'] if 'last_n' in r else r['perplexity']


def baseline_points(baseline_dirs: Sequence[str]) -> tuple[list, list, str]:
  """(tokens, perplexities) of language 0 over the evaluated steps of the monolingual runs."""
  xs, ys, kinds = [], [], set()
  for d in baseline_dirs:
    results = read_results(d)
    last = max(results) if results else 0
    for step, r in results.items():
      # The first tenth of a run (warm-up, the first checkpoint at step 1) is off any power law.
      if step < max(last / 10, 1) or 'perplexity' not in r or 'tokens_seen' not in r:
        continue
      p = r['perplexity']['lang0']
      kinds.add('last_n' if 'last_n' in p else 'all')
      xs.append(r['tokens_seen']['lang0'])
      ys.append(_ppl_of(p))
  if len(kinds) > 1:
    raise ValueError(f'teff: baselines {baseline_dirs} mix perplexities with and without --last_n')
  return xs, ys, kinds.pop() if kinds else 'all'


def teff_fit(baseline_dirs: Sequence[str]) -> tuple[dict, str]:
  """The power-law fit of the monolingual baselines and the kind of their perplexities; ValueError
  that says what to do when they have too few evaluated steps."""
  if not baseline_dirs:
    raise ValueError('teff needs --baseline_dir (monolingual runs evaluated with ppl at >= 3 steps)')
  xs, ys, kind = baseline_points(baseline_dirs)
  if len(xs) < 3:
    raise ValueError(
        f'teff: the monolingual baseline(s) {", ".join(baseline_dirs)} have perplexities at {len(xs)} '
        f'evaluated step(s) past the first tenth of training, and the power-law fit needs 3: save '
        f'their checkpoints more often (TrainerConfig.checkpoint_every, keep_checkpoints=None) and '
        f'evaluate them with --all_steps --metrics ppl')
  return te.fit_power_law(xs, ys), kind


def _teff(res: dict, opts: EvalOptions) -> dict:
  if 'tokens_seen' not in res:
    raise ValueError('teff needs the tokens seen per language: evaluate a run with a run.json '
                     '(launch/sweep.py writes it)')
  fit, kind = teff_fit(opts.baseline_dirs)
  out = {'fit': fit, 'baselines': list(opts.baseline_dirs), 'perplexity_kind': kind, 'languages': {}}
  for lang, r in res['perplexity'].items():
    out['languages'][lang] = te.token_efficiency(fit, _ppl_of(r), res['tokens_seen'][lang])
  return out


# --- command line ------------------------------------------------------------------------------------

def make_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m t5x_like.eval', description=__doc__.split('\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--model_dir', required=True)
  g = p.add_mutually_exclusive_group()
  g.add_argument('--step', type=int, help='checkpoint step (default: the latest)')
  g.add_argument('--all_steps', action='store_true', help='every checkpoint of the run')
  p.add_argument('--skip_done', action='store_true',
                 help='skip steps whose results.json already has every asked-for metric')
  p.add_argument('--metrics', default='ppl', help=f'comma-separated subset of {",".join(METRICS)}')
  p.add_argument('--eval_files', nargs='+', help='evaluation text (default: run.json validation files)')
  p.add_argument('--sequence_length', type=int, help='window length (default: run.json, else 128)')
  p.add_argument('--window_mode', choices=('packed', 'stream'), default=None,
                 help="'stream': lines joined by EOS and cut into windows (tasks.cloned, the "
                 "default); 'packed': one line per example, packed (tasks.lm)")
  p.add_argument('--max_windows', type=int, default=256)
  p.add_argument('--batch_size', type=int, default=16)
  p.add_argument('--last_n', type=int, help='also score only the last n positions of each window')
  p.add_argument('--align_windows', type=int, default=64, help='windows for hidden-state alignment')
  p.add_argument('--grad_batches', type=int, default=4)
  p.add_argument('--mexa_pivot', help="pivot text: a file or flores:CODE, optionally @LANG (clone k)")
  p.add_argument('--mexa_target', action='append', default=[], help='target text (repeatable), same form')
  p.add_argument('--mexa_n', type=int, default=100, help='parallel sentences (MEXA uses 100)')
  p.add_argument('--flores_tar', help='FLORES-200 tar (default ../shared/data/eval/...)')
  p.add_argument('--baseline_dir', action='append', default=[], help='monolingual run for teff')
  p.add_argument('--init_control', action='store_true',
                 help='also run align/mexa on an untrained model of the same config')
  p.add_argument('--src_file')
  p.add_argument('--ref_file')
  p.add_argument('--prompt', help="format string with {source} for bleu prompts")
  p.add_argument('--beam_size', type=int, default=1, help='1: greedy')
  p.add_argument('--max_decode_length', type=int, default=128)
  p.add_argument('--compilation_cache_dir',
                 help="jax's persistent compilation cache: runs of one model shape, and the steps "
                 "of one run, load what another compiled (t5x_like/compilation_cache.py); 'none': "
                 'no cache')
  return p


def options_from_args(args, run_info: dict) -> EvalOptions:
  metrics = tuple(m.strip() for m in args.metrics.split(',') if m.strip())
  bad = [m for m in metrics if m not in METRICS]
  if bad:
    raise ValueError(f'unknown metric(s) {bad}; choose from {METRICS}')
  return EvalOptions(
      metrics=metrics, eval_files=tuple(args.eval_files or run_info.get('validation_files', ())),
      sequence_length=args.sequence_length,
      window_mode=args.window_mode or run_info.get('window_mode', 'stream'),
      max_windows=args.max_windows, batch_size=args.batch_size, last_n=args.last_n,
      align_windows=args.align_windows, grad_batches=args.grad_batches, mexa_pivot=args.mexa_pivot,
      mexa_targets=tuple(args.mexa_target), mexa_n=args.mexa_n, flores_tar=args.flores_tar,
      baseline_dirs=tuple(args.baseline_dir), init_control=args.init_control,
      src_file=args.src_file, ref_file=args.ref_file, prompt=args.prompt, beam_size=args.beam_size,
      max_decode_length=args.max_decode_length)


_RESULT_KEY = {'ppl': 'perplexity', 'align': 'alignment', 'grad': 'gradient_alignment',
               'mexa': 'mexa', 'teff': 'token_efficiency', 'bleu': 'translation'}


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = make_parser().parse_args(argv)
  try:
    compilation_cache.use(args.compilation_cache_dir)
    run_info = read_run_info(args.model_dir)
    opts = options_from_args(args, run_info)
    if 'teff' in opts.metrics:
      teff_fit(opts.baseline_dirs)  # (baselines it cannot use: said before any checkpoint is read)
    cfg = run_dir.load_model_config(args.model_dir)
    if 'grad' in opts.metrics and cfg.family != 'decoder':
      raise ValueError(f'--metrics grad: gradient alignment is implemented for decoder-only models; '
                       f'{args.model_dir} holds an encoder-decoder')
    model = build_model(cfg)
    vocab = run_dir.load_vocabulary(args.model_dir)
    # (a text missing, unpaired or misaligned: said before any checkpoint is read, not after hours of
    # decoding; and read once, not again at every step)
    inputs = read_inputs(opts, vocab, run_info)
    available = checkpoint_steps(args.model_dir)
    if not available:
      raise FileNotFoundError(f'no checkpoint in {args.model_dir}/checkpoints')
    if args.all_steps:
      steps = available
    elif args.step is not None:
      if args.step not in available:
        raise ValueError(f'no checkpoint at step {args.step}; there are {available}')
      steps = [args.step]
    else:
      steps = [available[-1]]
  except (ValueError, FileNotFoundError, KeyError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  done = read_results(args.model_dir)
  unreadable = []  # --all_steps: damaged steps are named and passed over, the others evaluated
  for step in steps:
    if args.skip_done and step in done and all(_RESULT_KEY[m] in done[step] for m in opts.metrics):
      print(f'step {step}: already evaluated ({",".join(opts.metrics)})')
      continue
    t0 = time.perf_counter()
    try:
      params, step = _load_params(args.model_dir, step,
                                  follow_latest=args.step is None and not args.all_steps)
      step_cfg = run_dir.load_model_config(args.model_dir, step)
      if step_cfg != cfg:  # (a run resumed with another rope_theta: each step with its own)
        cfg, model = step_cfg, build_model(step_cfg)
    except checkpointing.CheckpointGone as e:
      if args.all_steps:  # (a run still training: its older steps go as it saves)
        print(f'step {step}: not evaluated: {e}', file=sys.stderr, flush=True)
        continue
      print(f'error: {e}', file=sys.stderr)
      return 2
    except (checkpointing.CheckpointDamaged, checkpointing.CheckpointMismatch) as e:
      if args.all_steps:
        print(f'error: {e}; going on with the other steps', file=sys.stderr, flush=True)
        unreadable.append(step)
        continue
      others = [x for x in available if x != step]
      print(f'error: {e}' + (f'; evaluate another step with --step (there: {others})' if others
                             else ''), file=sys.stderr)
      return 2
    try:
      with compilation_cache.lookups() as cache:
        res = evaluate(model, params, vocab, step, opts, run_info, inputs)
    except (ValueError, FileNotFoundError) as e:  # bad input (flags, files): one line, exit 2
      print(f'error: step {step}: {e}', file=sys.stderr)
      return 2
    path = write_results(args.model_dir, step, res)
    write_tensorboard(args.model_dir, step, res)
    note = compilation_cache.describe(cache)
    print(f'step {step}: {summary_line(res)} ({time.perf_counter() - t0:.1f}s'
          f'{"; " + note if note else ""}) -> {path}', flush=True)
  if unreadable:
    print(f'error: {len(unreadable)} of {len(steps)} steps not evaluated, their checkpoints could not '
          f'be read (above): {unreadable}', file=sys.stderr)
    return 2
  return 0


def _load_params(model_dir: str, step: int, follow_latest: bool, tries: int = 3):
  """run_dir.load_params; following the latest step of a run that is still training, a step that its
  trainer removed while it was being read gives way to the new latest."""
  for attempt in range(tries):
    try:
      return run_dir.load_params(model_dir, step)
    except checkpointing.CheckpointGone:
      newer = [s for s in checkpoint_steps(model_dir) if s > step]
      if not follow_latest or not newer or attempt == tries - 1:
        raise
      step = newer[-1]


def summary_line(res: dict) -> str:
  parts = []
  for lang, r in res.get('perplexity', {}).items():
    parts.append(f'ppl {lang} {r["perplexity"]:.2f}' +
                 (f' (last {r["last_n"]["n"]}: {r["last_n"]["perplexity"]:.2f})' if 'last_n' in r
                  else ''))
  for lang, r in res.get('alignment', {}).items():
    parts.append(f'align {lang} centred gap mean {sum(r["centred_gap"]) / len(r["centred_gap"]):+.3f}')
  for lang, r in res.get('gradient_alignment', {}).items():
    parts.append(f'grad {lang} {r["non_vocab"]:+.3f} (control {r["non_vocab_mismatched"]:+.3f})')
  for t, r in res.get('mexa', {}).get('targets', {}).items():
    parts.append(f'mexa {t} mean {r["weighted"]["mean"]:.2f} max {r["weighted"]["max"]:.2f}')
  cut = sum(res.get('mexa', {}).get('cut', {}).values())
  if cut:
    parts.append(f'mexa: {cut} sentence(s) cut at the model\'s length limit')
  for lang, r in res.get('token_efficiency', {}).get('languages', {}).items():
    if r.get('teff') is not None:
      parts.append(f'teff {lang} {r["teff"]:.2f}')
  tr = res.get('translation')
  if tr:
    parts.append(f'bleu {tr["bleu"]:.2f} chrF {tr["chrf"]:.2f} ({tr["num_sentences"]} sentences, '
                 f'beam {tr["beam_size"]})')
  return ' | '.join(parts)


if __name__ == '__main__':
  sys.stdout.reconfigure(line_buffering=True)  # (to a log file too, each line as printed)
  sys.exit(main())
