"""Examples/s and tokens/s of each experiment's data pipeline on one core, next to what the
tiny configs' train step consumes (a benchmark, not a test).

  python benchmarks/data_throughput.py [--batches 50] [--experiments interlinear_captions ...]
  python benchmarks/data_throughput.py --grain [--batches 200]

--grain: the export path (Grain over ArrayRecord, t5x_like/data_grain.py). Exports the tiny decoder
config's train split (Multi30k captions) packed to 64 tokens and to 2048 tokens (one pass each,
`tasks export --epoch`), then reads each with the trainer's ExportIterator (shuffled, repeating) pinned
to one core, for the tiny batch (16 x 64) and a 1B-sized host batch (32 x 2048). The step's
consumption for the 1B row is computed, not measured: a 1.06B-parameter decoder (the one of
convert_memory.py) at MFU_REF on one H100/H200 (989 TFLOP/s dense bf16).

Each experiment's gin file is parsed like the trainer does; the train dataset (with the feature
converter, batched) is read for --batches batches after a warm-up, with tf.data limited to one
thread. Compare the batches/s with the train step's s/step in the training log (step/s needed =
1 / s_per_step): the pipeline is not the bottleneck while its batches/s is higher.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

# Before jax and TensorFlow load: both would otherwise look for accelerators.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import gin  # noqa: E402
import tensorflow as tf  # noqa: E402

from t5x_like import data  # noqa: E402
from t5x_like.models import DecoderConfig  # noqa: E402
from tasks import export  # noqa: E402
from tasks.__main__ import register_from_gin  # noqa: E402

import train_step_throughput  # noqa: E402  (this directory, next to the script)

EXPERIMENTS = ('interlinear_captions', 'interlinear_instructions_captions', 'csr_captions_encdec',
               'csr_captions_decoder', 'cloned_captions')


def measure(name: str, batches: int) -> dict:
  gin.clear_config()
  configs = register_from_gin([f'gin_configs/experiments/{name}.gin'],
                              ["MODEL_DIR = '/tmp/unused'", 'TRAIN_STEPS = 1000'])
  cfg = configs['train']
  family = gin.query_parameter('train.model').selector
  family = 'decoder' if 'Decoder' in family else 'encdec'
  ds = data.get_dataset(cfg, family)
  opts = tf.data.Options()
  opts.threading.private_threadpool_size = 1
  opts.threading.max_intra_op_parallelism = 1
  it = iter(ds.with_options(opts))
  for _ in range(3):
    next(it)
  t0 = time.perf_counter()
  tokens = examples = 0
  for _ in range(batches):
    b = next(it)
    w = b['decoder_loss_weights'].numpy()
    tokens += int((w > 0).sum()) + int((b.get('encoder_input_tokens', tf.zeros([1])).numpy() > 0)
                                       .sum())
    seg = b.get('decoder_segment_ids')
    examples += int(seg.numpy().max(1).sum()) if seg is not None else w.shape[0]
  dt = time.perf_counter() - t0
  return {'experiment': name, 'batch': cfg.batch_size, 'lengths': dict(cfg.task_feature_lengths),
          'batches_per_s': round(batches / dt, 1), 'examples_per_s': round(examples / dt),
          'tokens_per_s': round(tokens / dt)}


# The 207M preset's measured MFU with cuDNN attention on one H100 (BENCHMARKS.md).
MFU_REF = 0.277
PEAK = 989e12
ONE_B = dict(vocab_size=32000, embed_dim=2048, num_layers=18, num_heads=16, num_kv_heads=16,
             head_dim=128, mlp_dim=5632)


def export_tiny(out: str, length: int) -> str:
  gin.clear_config()
  configs, _ = register_from_gin(['gin_configs/examples/tiny_decoder_pretrain.gin'],
                                 ["MODEL_DIR = '/tmp/unused'", 'TRAIN_STEPS = 1',
                                  f'SEQUENCE_LENGTH = {length}'])
  cfg = dataclasses.replace(configs['train'], num_epochs=1, shuffle=False)
  path = os.path.join(out, f'tiny_{length}')
  if not os.path.exists(os.path.join(path, 'train', 'meta.json')):
    export.export_split(cfg, 'decoder', path)
  return path


def measure_grain(export_dir: str, length: int, batch: int, batches: int) -> dict:
  cfg = data.DataConfig(None, {'targets': length}, batch_size=batch, shuffle=True, seed=0,
                        export_dir=export_dir)
  it = data.open_iterator(cfg, 'decoder', None)
  for _ in range(3):
    next(it)
  t0 = time.perf_counter()
  tokens = examples = 0
  for _ in range(batches):
    b = next(it)
    tokens += int((b['decoder_loss_weights'] > 0).sum())
    examples += int(b['decoder_segment_ids'].max(1).sum())
  dt = time.perf_counter() - t0
  return {'path': 'grain', 'batch': f'{batch} x {length}', 'batches_per_s': round(batches / dt, 1),
          'examples_per_s': round(examples / dt), 'tokens_per_s': round(tokens / dt),
          'positions_per_s': round(batch * length * batches / dt)}


def grain_main(batches: int) -> None:
  out = os.path.join(tempfile.gettempdir(), 'data_throughput_exports')
  paths = {n: export_tiny(out, n) for n in (64, 2048)}
  # The tiny train step, measured here (all cores) so that the ratio comes from one run.
  tiny = train_step_throughput.PRESETS['cpu_tiny']
  step = train_step_throughput.measure(tiny, {}, tiny['steps'])
  os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # grain's threads inherit it
  r = measure_grain(paths[64], 64, 16, batches)
  print(json.dumps({**r, 'config': 'tiny', 'train_step_ms': step['step_ms'],
                    'batches_per_step_consumed': round(r['batches_per_s'] * step['step_ms'] / 1e3,
                                                       1)}), flush=True)
  one_b = DecoderConfig(**ONE_B)
  need = MFU_REF * PEAK / one_b.flops_per_token(2048)
  r = measure_grain(paths[2048], 2048, 32, max(batches // 10, 10))
  print(json.dumps({**r, 'config': f'1B-sized ({one_b.num_params() / 1e9:.2f}B params)',
                    'step_consumes_positions_per_s_per_chip': round(need),
                    'chips_fed_by_one_core': round(r['positions_per_s'] / need, 1)}), flush=True)


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--batches', type=int, default=50)
  p.add_argument('--experiments', nargs='*', default=list(EXPERIMENTS))
  p.add_argument('--grain', action='store_true', help='the export path instead (see the docstring)')
  args = p.parse_args()
  os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  if args.grain:
    grain_main(args.batches)
    return
  for name in args.experiments:
    print(json.dumps(measure(name, args.batches)), flush=True)


if __name__ == '__main__':
  main()
