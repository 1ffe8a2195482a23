"""Training metrics: a console progress line with ETA, TensorBoard event files, and MFU.

MFU = (model FLOPs per token x tokens per second) / (peak FLOP/s per device x devices), with FLOPs per
token from the model config's `flops_per_token` (6N for the matmuls + the attention term, PaLM App. B).
Peak numbers are dense bf16 datasheet values; on other hardware pass `peak_flops_per_device`.
"""
from __future__ import annotations

import datetime
import itertools
import os
import socket
import sys
import time
from typing import Mapping, Optional

import jax
import numpy as np
from etils import epath
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.summary.writer.record_writer import RecordWriter
from tensorboard.util import tensor_util

PEAK_BF16_FLOPS = (  # substring of jax.Device.device_kind -> dense bf16 FLOP/s per chip
    ('TPU v6 lite', 918e12), ('TPU v6e', 918e12), ('TPU v5p', 459e12), ('TPU v5 lite', 197e12),
    ('TPU v5e', 197e12), ('TPU v5', 459e12), ('TPU v4', 275e12), ('TPU v3', 123e12),
    ('H200', 989e12), ('H100', 989e12), ('A100', 312e12), ('L4', 121e12),
)


def peak_flops_per_device(override: Optional[float] = None) -> Optional[float]:
  if override:
    return override
  kind = jax.devices()[0].device_kind
  for name, flops in PEAK_BF16_FLOPS:
    if name in kind:
      return flops
  return None  # CPU and unknown devices: MFU is not reported


class MetricsLogger:
  """Writes scalars to MODEL_DIR/{train,eval} event files and prints a progress line (host 0 only)."""

  def __init__(self, model_dir: str, total_steps: int, flops_per_token: float,
               peak_flops: Optional[float], stream=None):
    self.is_main = jax.process_index() == 0
    self.total_steps = total_steps
    self.flops_per_token = flops_per_token
    self.peak_total = peak_flops * jax.device_count() if peak_flops else None
    self._stream = stream  # None: whatever sys.stdout is when printing (pytest swaps it)
    self._writers = {}
    self.model_dir = model_dir
    self._last_time: Optional[float] = None
    self._last_step: Optional[int] = None

  @property
  def stream(self):
    return self._stream or sys.stdout

  def _writer(self, name: str):
    if name not in self._writers:
      self._writers[name] = SummaryWriter(os.path.join(self.model_dir, name))
    return self._writers[name]

  def start(self, step: int):
    self._last_time, self._last_step = time.perf_counter(), step

  def log_train(self, step: int, metrics: Mapping[str, float], tokens_per_step: int) -> dict:
    now = time.perf_counter()
    steps = max(step - self._last_step, 1)
    step_time = (now - self._last_time) / steps
    self._last_time, self._last_step = now, step
    out = dict(metrics)
    out['step_time_s'] = step_time
    out['tokens_per_s'] = tokens_per_step / step_time
    if self.peak_total:
      out['mfu'] = self.flops_per_token * out['tokens_per_s'] / self.peak_total
    if self.is_main:
      w = self._writer('train')
      for k, v in out.items():
        w.scalar(k, v, step)
      w.flush()
      eta = datetime.timedelta(seconds=int(step_time * (self.total_steps - step)))
      mfu = f"{100 * out['mfu']:.1f}%" if 'mfu' in out else 'n/a'
      saved = (f" | checkpoint blocked {out['checkpoint_blocked_s']:.3f} s"
               if 'checkpoint_blocked_s' in out else '')
      print(f"step {step:>{len(str(self.total_steps))}}/{self.total_steps} | "
            f"loss {out['loss']:.4f} | acc {out['accuracy']:.3f} | lr {out['learning_rate']:.2e} | "
            f"{_si(out['tokens_per_s'])} tok/s | {step_time:.3f} s/step | MFU {mfu} | ETA {eta}{saved}",
            file=self.stream, flush=True)
    return out

  def log_eval(self, step: int, name: str, metrics: Mapping[str, float]):
    if not self.is_main:
      return
    w = self._writer(os.path.join('eval', name) if name else 'eval')
    for k, v in metrics.items():
      w.scalar(k, v, step)
    w.flush()
    shown = ' | '.join(f'{k} {v:.4f}' for k, v in metrics.items())
    print(f'eval {name} @ step {step} | {shown}', file=self.stream, flush=True)

  def close(self):
    for w in self._writers.values():
      w.close()


class SummaryWriter:
  """TensorBoard event files without TensorFlow: tensorboard's own RecordWriter and protos (its
  EventFileWriter imports TensorFlow whenever TensorFlow is installed). Scalars are written as
  tf.summary.scalar writes them (a float32 tensor with the scalars plugin's metadata), so TensorBoard
  and readers of the earlier flax/TF files see the same thing."""

  def __init__(self, log_dir: str):
    path = epath.Path(log_dir)
    path.mkdir(parents=True, exist_ok=True)
    name = (f'events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.'
            f'{next(_WRITER_IDS)}')
    self._writer = RecordWriter((path / name).open('wb'))
    self._write(event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2'))

  def _write(self, event) -> None:
    self._writer.write(event.SerializeToString())

  def scalar(self, tag: str, value: float, step: int) -> None:
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(
        tag=tag, tensor=tensor_util.make_tensor_proto(np.float32(value)),
        metadata=scalar_metadata.create_summary_metadata(display_name=tag, description=''))])
    self._write(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


_WRITER_IDS = itertools.count()


def _si(x: float) -> str:
  for unit, scale in (('G', 1e9), ('M', 1e6), ('k', 1e3)):
    if x >= scale:
      return f'{x / scale:.1f}{unit}'
  return f'{x:.0f}'
