"""Token efficiency against monolingual baselines (Schäfer et al. 2024).

Fit 1/PPL = -a * x^(-b) + c (a, b > 0; c is the inverse of the asymptotic perplexity) to the
(tokens, perplexity) points of monolingual runs; a multilingual run's language reached perplexity P
after seeing T tokens of that language; the monolingual model would have needed
x(P) = ((c - 1/P) / a)^(-1/b) tokens for it. TEff = x(P) / T: above 1, the language gained from the
other one(s); below 1, it lost. Perplexities better than the fit's asymptote (1/P >= c) have no
finite x and are reported as inf.

Points from the intermediate checkpoints of ONE monolingual run are cheaper than a family of runs, but
a cosine schedule has not annealed at those steps; prefer the final checkpoints of runs of several
lengths when the budget allows (the fit takes any set of points).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np


def fit_power_law(tokens: Sequence[float], perplexities: Sequence[float]) -> dict:
  """Least-squares fit of 1/PPL = -a x^-b + c: exact linear solve for (a, c) on a grid of b, refined."""
  x = np.asarray(tokens, np.float64)
  y = 1.0 / np.asarray(perplexities, np.float64)
  if len(x) < 3:
    raise ValueError(f'the power-law fit needs at least 3 (tokens, ppl) points, got {len(x)}')
  if np.any(x <= 0):
    raise ValueError('token counts must be positive')

  def solve(b):
    design = np.stack([-x ** (-b), np.ones_like(x)], axis=1)
    (a, c), *_ = np.linalg.lstsq(design, y, rcond=None)
    err = float(np.sum((design @ np.array([a, c]) - y) ** 2))
    return err, a, c

  grid = np.geomspace(1e-3, 3.0, 400)
  errs = [solve(b)[0] if solve(b)[1] > 0 else np.inf for b in grid]
  i = int(np.argmin(errs))
  lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
  for _ in range(60):  # golden-section refinement of b around the best grid point
    m1, m2 = lo + (hi - lo) * 0.382, lo + (hi - lo) * 0.618
    if solve(m1)[0] < solve(m2)[0]:
      hi = m2
    else:
      lo = m1
  b = (lo + hi) / 2
  err, a, c = solve(b)
  if a <= 0:
    raise ValueError('power-law fit failed: perplexity does not fall with tokens in these points')
  resid = y - (-a * x ** (-b) + c)
  return {'a': float(a), 'b': float(b), 'c': float(c), 'rmse_inv_ppl': float(np.sqrt(np.mean(resid ** 2))),
          'num_points': int(len(x))}


def tokens_for_perplexity(fit: dict, perplexity: float) -> float:
  """Monolingual tokens the fit needs to reach `perplexity` (inf beyond its asymptote)."""
  gap = fit['c'] - 1.0 / perplexity
  if gap <= 0:
    return math.inf
  return float((gap / fit['a']) ** (-1.0 / fit['b']))


def token_efficiency(fit: dict, perplexity: float, tokens_seen: float) -> dict:
  mono = tokens_for_perplexity(fit, perplexity)
  return {'teff': mono / tokens_seen if tokens_seen > 0 else math.nan,
          'monolingual_tokens': mono, 'tokens_seen': float(tokens_seen),
          'perplexity': float(perplexity)}


def stage_probabilities(p_clone: float, schedule: Optional[str]) -> list[float]:
  """Clone probability per equal-length stage: schedule 'a_b_...' or one stage of p_clone."""
  if schedule in (None, '', 'none', 'None'):
    return [float(p_clone)]
  return [float(s) for s in str(schedule).split('_')]


def language_fractions(p_clone: float, schedule: Optional[str], step: int, train_steps: int,
                       num_languages: int = 2) -> list[float]:
  """Expected fraction of the first `step` steps' sequences written in each language.

  Language 0 gets 1 - p; the clones share p uniformly (the paper's >2-language rule). Stages of a
  schedule split train_steps into equal parts.
  """
  probs = stage_probabilities(p_clone, schedule)
  bounds = np.linspace(0, train_steps, len(probs) + 1)
  clone = 0.0
  for p, lo, hi in zip(probs, bounds[:-1], bounds[1:]):
    clone += p * max(0.0, min(step, hi) - lo)
  clone /= max(step, 1)
  if num_languages == 1:
    return [1.0]
  return [1.0 - clone] + [clone / (num_languages - 1)] * (num_languages - 1)
