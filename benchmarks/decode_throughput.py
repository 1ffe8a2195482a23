"""Greedy and beam-search decoding time (t5x_like.decoding) on random parameters and random prompts.

    python benchmarks/decode_throughput.py                     # both families, CPU-sized
    python benchmarks/decode_throughput.py --max_new_tokens 128 --batch 32

What the translation evaluation (t5x_like/evaluation/translation.py) pays per batch. Decoding runs with
eos_id=-1, an id no model emits, so every row generates max_new_tokens tokens and the timing does not
depend on when a random model happens to stop. Prints one JSON line per
(family, method): compile seconds, then the median of timed calls and the new tokens per second.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5x_like import decoding
from t5x_like.models import DecoderConfig, EncDecConfig, build_model

from records import record_header, write_record

MODELS = {
    'decoder': DecoderConfig(vocab_size=8000, embed_dim=256, num_layers=6, num_heads=8, num_kv_heads=8,
                             head_dim=32, mlp_dim=688, dtype='float32'),
    'encdec': EncDecConfig(vocab_size=8000, embed_dim=256, num_encoder_layers=4, num_decoder_layers=4,
                           num_heads=8, head_dim=32, mlp_dim=688, dtype='float32'),
}


def random_params(cfg, batch: int, prompt_len: int):
  model = build_model(cfg)
  tokens = jnp.ones((batch, prompt_len), jnp.int32)
  example = ({'decoder_input_tokens': tokens} if cfg.family == 'decoder' else
             {'encoder_input_tokens': tokens, 'decoder_input_tokens': tokens})
  return nn.unbox(model.init(jax.random.key(0), example))['params']


def time_calls(fn, repeats: int):
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return compile_s, statistics.median(times)


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--prompt_len', type=int, default=32)
  p.add_argument('--max_new_tokens', type=int, default=64)
  p.add_argument('--beam_size', type=int, default=4)
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--out', default=None, help='write the JSON record here')
  args = p.parse_args()
  rows = []
  for family, cfg in MODELS.items():
    params = random_params(cfg, args.batch, args.prompt_len)
    prompts = jax.random.randint(jax.random.key(1), (args.batch, args.prompt_len), 2, cfg.vocab_size)
    runs = {
        'greedy': lambda: decoding.greedy_decode(params, cfg, prompts,
                                                 max_new_tokens=args.max_new_tokens, eos_id=-1),
        f'beam{args.beam_size}': lambda: decoding.beam_search(
            params, cfg, prompts, max_new_tokens=args.max_new_tokens, beam_size=args.beam_size,
            eos_id=-1),
    }
    for method, fn in runs.items():
      compile_s, secs = time_calls(fn, args.repeats)
      new_tokens = args.batch * args.max_new_tokens
      rows.append({'family': family, 'method': method, 'batch': args.batch,
                   'prompt_len': args.prompt_len, 'max_new_tokens': args.max_new_tokens,
                   'first_call_s': round(compile_s, 2), 'seconds': round(secs, 3),
                   'new_tokens_per_s': round(new_tokens / secs, 1),
                   'device': jax.devices()[0].device_kind})
      print(json.dumps(rows[-1]), flush=True)
  write_record(args.out, {**record_header(), 'benchmark': 'decode_throughput',
                          'models': {k: dataclasses.asdict(v) for k, v in MODELS.items()}, 'results': rows})


if __name__ == '__main__':
  main()
