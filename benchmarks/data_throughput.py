"""Examples/s and tokens/s of each experiment's data pipeline on one core, next to what the
tiny configs' train step consumes (a benchmark, not a test).

  python benchmarks/data_throughput.py [--batches 50] [--experiments interlinear_captions ...]

Each experiment's gin file is parsed like the trainer does; the train dataset (with the feature
converter, batched) is read for --batches batches after a warm-up, with tf.data limited to one
thread. Compare the batches/s with the train step's s/step in the training log (step/s needed =
1 / s_per_step): the pipeline is not the bottleneck while its batches/s is higher.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

EXPERIMENTS = ('interlinear_captions', 'interlinear_instructions_captions', 'csr_captions_encdec',
               'csr_captions_decoder', 'cloned_captions')


def measure(name: str, batches: int) -> dict:
  import gin
  import tensorflow as tf
  from t5x_like import data
  from tasks.__main__ import register_from_gin
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


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--batches', type=int, default=50)
  p.add_argument('--experiments', nargs='*', default=list(EXPERIMENTS))
  args = p.parse_args()
  os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  for name in args.experiments:
    print(json.dumps(measure(name, args.batches)), flush=True)


if __name__ == '__main__':
  main()
