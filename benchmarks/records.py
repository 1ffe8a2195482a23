"""The header every benchmark record carries, and writing it (benchmarks run as scripts import this
module from their own directory)."""
from __future__ import annotations

import json
import os
import time
from typing import Optional

import jax

from t5x_like import metrics, provenance

PEAK_NOTE = 'dense bf16 peak of the device (t5x_like/metrics.py; 989 TFLOP/s for H100 and H200)'


def record_header() -> dict:
  """What every record of this directory carries: commit, device, jax version, MFU formula, peak."""
  return {'commit': provenance.source_commit(), 'device': jax.devices()[0].device_kind,
          'platform': jax.devices()[0].platform, 'n_devices': jax.device_count(),
          'jax_version': jax.__version__,
          'flop_formula': '6 x (non-embedding params + LM head) + attention 12*L*H*hd*seq (/2 causal) '
                          'per token (DecoderConfig/EncDecConfig.flops_per_token)',
          'peak_flops_per_device': metrics.peak_flops_per_device(), 'peak_note': PEAK_NOTE,
          'time': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}


def write_record(path: Optional[str], record: dict):
  if path:
    write_atomically(path, json.dumps(record, indent=1))


def write_atomically(path: str, text: str) -> None:
  """A benchmark stopped by a time limit while writing leaves the previous file whole, not half of
  the new one."""
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)
