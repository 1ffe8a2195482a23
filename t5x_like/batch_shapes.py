"""Global batch shapes of a run from its model family and feature lengths, without reading any data.

What seqio's feature converters (`t5x_like/data.py`) would emit for `task_feature_lengths` and a global
batch size, as ShapeDtypeStructs: the preflight compiles the train step against these, and
tests/test_batch_shapes.py checks them against real datasets.
"""
from __future__ import annotations

from typing import Mapping

import jax
import numpy as np

_PACKING = ('segment_ids', 'positions')


def _features(family: str, lengths: Mapping[str, int], pack: bool) -> dict[str, int]:
  lengths = dict(lengths)
  if 'targets' not in lengths:
    raise ValueError(f'task_feature_lengths {lengths} has no "targets" length')
  unknown = set(lengths) - {'inputs', 'targets'}
  if unknown:
    raise ValueError(f'task_feature_lengths: unknown features {sorted(unknown)} (inputs, targets)')
  if family == 'decoder':
    # DecoderFeatureConverter: with inputs it is a prefix LM over inputs + targets in one sequence.
    n = lengths['targets'] + lengths.get('inputs', 0)
    out = {f'decoder_{k}': n for k in ('target_tokens', 'input_tokens', 'loss_weights')}
    if 'inputs' in lengths:
      out['decoder_causal_attention'] = n
    if pack:
      out.update({f'decoder_{k}': n for k in _PACKING})
    return out
  if family == 'encdec':
    if 'inputs' not in lengths:
      raise ValueError(f'encdec task_feature_lengths {lengths} needs an "inputs" length')
    out = {'encoder_input_tokens': lengths['inputs']}
    out.update({f'decoder_{k}': lengths['targets']
                for k in ('target_tokens', 'input_tokens', 'loss_weights')})
    if pack:
      out.update({f'encoder_{k}': lengths['inputs'] for k in _PACKING})
      out.update({f'decoder_{k}': lengths['targets'] for k in _PACKING})
    return out
  raise ValueError(f'no feature converter for model family {family!r}')


def abstract_batch(family: str, task_feature_lengths: Mapping[str, int], batch_size: int,
                   pack: bool = True) -> dict[str, jax.ShapeDtypeStruct]:
  """{feature: ShapeDtypeStruct((batch_size, length), int32)} as the run's train step receives it."""
  if batch_size < 1:
    raise ValueError(f'batch size {batch_size} must be >= 1')
  return {k: jax.ShapeDtypeStruct((batch_size, n), np.int32)
          for k, n in sorted(_features(family, task_feature_lengths, pack).items())}
