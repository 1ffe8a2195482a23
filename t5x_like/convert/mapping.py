"""The family-independent half of a weight mapping: one `Rule` per Hugging Face tensor.

A rule names the HF tensor, the path of our parameter, the layer index when our parameter is stacked
(scanned layers carry a leading 'layers' axis), and how the two layouts relate. torch Linear weights are
`[out, in]`; our DenseGeneral kernels are `[in..., out...]`, with attention heads as separate axes:

  'copy'       same layout (embeddings, norm scales)
  'T'          2-D transpose (MLP, LM head, T5's [heads, buckets] vs HF's [buckets, heads] bias table)
  'heads_in'   our [embed, heads, head_dim] -> HF [heads * head_dim, embed]  (q, k, v projections)
  'heads_out'  our [heads, head_dim, embed] -> HF [embed, heads * head_dim]  (attention output)
"""
from __future__ import annotations

import dataclasses
import json
from typing import Optional

import numpy as np


class ConversionError(ValueError):
  """Bad input to a conversion: reported as one `error: ...` line by the CLI."""


@dataclasses.dataclass(frozen=True)
class Rule:
  hf: str
  ours: tuple[str, ...]
  layer: Optional[int]
  kind: str  # 'copy' | 'T' | 'heads_in' | 'heads_out'


def layer_param(scan: bool, stack: tuple[str, ...], i: int, rest: tuple[str, ...]):
  """(path, layer index) of layer i's parameter: stacked under 'layers' when scanned, else 'layers_{i}'."""
  if scan:
    return stack + ('layers',) + rest, i
  return stack + (f'layers_{i}',) + rest, None


def to_hf(kind: str, a: np.ndarray) -> np.ndarray:
  if kind == 'copy':
    return a
  if kind == 'T':
    return a.T
  if kind == 'heads_in':
    return a.reshape(a.shape[0], -1).T
  if kind == 'heads_out':
    return a.reshape(-1, a.shape[-1]).T
  raise ValueError(kind)


def hf_shape(kind: str, ours: tuple[int, ...]) -> tuple[int, ...]:
  if kind == 'copy':
    return tuple(ours)
  if kind == 'T':
    return tuple(reversed(ours))
  if kind == 'heads_in':
    return (int(np.prod(ours[1:])), ours[0])
  if kind == 'heads_out':
    return (ours[-1], int(np.prod(ours[:-1])))
  raise ValueError(kind)


def from_hf(kind: str, t: np.ndarray, ours: tuple[int, ...]) -> np.ndarray:
  """Inverse of `to_hf`; `ours` is the shape of our (per-layer) parameter."""
  if kind == 'copy':
    return t.reshape(ours)
  return t.T.reshape(ours)


def check_fields(hf_config: dict, defaults: dict, handled: frozenset, ignored: frozenset,
                 what: str) -> None:
  """Refuses any HF config field that is neither handled nor known to be irrelevant, unless it has its
  default value: a field we don't understand could change the computation (penzai's rule)."""
  defaults = json.loads(json.dumps(defaults))  # as config.json stores them (e.g. int dict keys -> str)
  for key, value in sorted(hf_config.items()):
    if key in handled or key in ignored:
      continue
    if key in defaults and defaults[key] == value:
      continue
    raise ConversionError(f'{what} config field {key}={value!r} is not supported by this converter '
                          '(handled: ' + ', '.join(sorted(handled)) + ')')
