"""Where a train step's time goes: a jax profiler trace of a few steps, and a summary read back from it.

`TrainerConfig.profile_first_step = N` (0: off) and `profile_num_steps = K` trace steps N..N+K-1 of a
run, on process 0, into MODEL_DIR/train/plugins/profile/<time>/<host>.xplane.pb: TensorBoard's Profile
tab (tensorboard-plugin-profile / XProf) opens it beside the run's scalars, Perfetto too. The trainer
then prints the events that took most time in those steps (`summarize`; also benchmarks/
train_step_throughput.py --profile, and the GPU suite's step (a)).

The summary reads the trace with `jax.profiler.ProfileData` (no TensorFlow, no XProf). It sums event
time by name on the device planes' 'XLA Ops' lines (TPU, and GPU where the trace has them), else on
the device planes' other lines (a GPU's streams: kernels, each with the XLA op it runs), else on the
host's XLA:CPU threads. Events can nest (a scanned loop's `while` holds its body's ops) and run side
by side (threads, streams), so a share is of the summed event time, not of the step. The trace file
is the full record; the summary is a first look at it. How a GPU's trace is laid out is read from
jax/XProf's conventions: no GPU has run this yet.
"""
from __future__ import annotations

import collections
import glob
import os
from typing import Optional

import jax

# Lines of a device plane that hold no op of their own (xprof's step, module and launch views).
_NOT_OPS = ('Steps', 'XLA Modules', 'Launch Stats', 'Source', 'Framework Name Scope', 'Framework Ops',
            'XLA TraceMe')


class StepProfiler:
  """Traces steps first..first+num-1 (1-based, as the trainer counts) when `first` > 0."""

  def __init__(self, log_dir: str, first: int, num: int, enabled: bool = True):
    if first < 0 or (first and num < 1):
      raise ValueError(f'TrainerConfig.profile_first_step={first}, profile_num_steps={num}: '
                       'the first step must be >= 1 (0: no profile) and the number of steps >= 1')
    self.log_dir, self.first, self.last = log_dir, first, first + num - 1
    self.enabled = enabled and first > 0
    self.active = False
    self._existing: set = set()

  def before(self, step: int) -> Optional[str]:
    """Call before running `step`. Returns a warning if the profiler could not start: a run is not
    stopped for its profile."""
    if not (self.enabled and step == self.first):
      return None
    self._existing = set(_traces(self.log_dir))
    try:
      jax.profiler.start_trace(self.log_dir)
    except Exception as e:  # pylint: disable=broad-except  # e.g. no CUPTI, another trace running
      self.enabled = False
      return f'WARNING: no profile: the profiler did not start ({type(e).__name__}: {str(e)[:200]})'
    self.active = True
    return None

  def after(self, step: int, outputs) -> Optional[str]:
    """Call after dispatching `step` with its outputs; returns the trace file once it is written."""
    if not (self.active and step == self.last):
      return None
    jax.block_until_ready(outputs)  # the trace must hold the last step's device work
    return self._stop()

  def close(self) -> Optional[str]:
    """The run ended (or was stopped) inside the traced steps: the trace is written as it is."""
    return self._stop() if self.active else None

  def _stop(self) -> Optional[str]:
    jax.profiler.stop_trace()
    self.active = False
    new = sorted(set(_traces(self.log_dir)) - self._existing, key=os.path.getmtime)
    return new[-1] if new else None


def _traces(log_dir: str) -> list:
  return glob.glob(os.path.join(log_dir, 'plugins', 'profile', '*', '*.xplane.pb'))


def summarize(trace_path: str, top: int = 12) -> dict:
  """{'trace', 'source', 'lines', 'total_ms', 'ops': [{'name', 'hlo_op', 'ms', 'share', 'count'}]}
  of a trace file: the `top` events by summed time."""
  data = jax.profiler.ProfileData.from_file(trace_path)
  planes = list(data.planes)
  devices = [p for p in planes if p.name.startswith('/device:') and _has_events(p)]
  if devices:
    lines = [(p, l) for p in devices for l in p.lines if l.name == 'XLA Ops']
    source = 'device XLA Ops'
    if not lines:
      lines = [(p, l) for p in devices for l in p.lines if l.name not in _NOT_OPS]
      source = 'device streams'
  else:
    lines = [(p, l) for p in planes if p.name.startswith('/host:') for l in p.lines
             if l.name.startswith('tf_XLA')]
    source = 'host XLA threads'
  time_ns: collections.Counter = collections.Counter()
  count: collections.Counter = collections.Counter()
  hlo_op: dict = {}
  for _, line in lines:
    for e in line.events:
      if e.name.startswith('end: ') or '::' in e.name:  # markers and runtime bookkeeping
        continue
      time_ns[e.name] += e.duration_ns
      count[e.name] += 1
      if e.name not in hlo_op:  # a GPU kernel names the XLA op it runs (stat 'hlo_op')
        hlo_op[e.name] = next((str(v) for k, v in e.stats if k == 'hlo_op'), None)
  total = sum(time_ns.values())
  ops = [{'name': n, 'hlo_op': hlo_op.get(n), 'ms': t / 1e6, 'share': t / total if total else 0.0,
          'count': count[n]} for n, t in time_ns.most_common(top)]
  return {'trace': trace_path, 'source': source,
          'lines': sorted({f'{p.name} | {l.name}' for p, l in lines})[:16],
          'total_ms': total / 1e6, 'ops': ops}


def _has_events(plane) -> bool:
  return any(True for line in plane.lines for _ in line.events)


def summary_lines(summary: dict, top: int = 8) -> list[str]:
  """The summary as a few log lines."""
  out = [f'profile: {summary["trace"]} ({summary["source"]}, {summary["total_ms"]:.1f} ms summed)']
  for op in summary['ops'][:top]:
    op_name = f' [{op["hlo_op"]}]' if op.get('hlo_op') and op['hlo_op'] != op['name'] else ''
    out.append(f'  {100 * op["share"]:5.1f}%  {op["ms"]:9.2f} ms  x{op["count"]:<5d} '
               f'{op["name"][:90]}{op_name}')
  return out
