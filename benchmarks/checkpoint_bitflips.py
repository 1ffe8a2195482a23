"""What a single flipped bit in a checkpoint's files does, with and without the state checksums.

Saves the train state of a small decoder (parameters and Adam moments, float32) through the trainer's
Checkpointer, then, one at a time, flips one bit at evenly spaced byte offsets of every array data
file (TensorStore's OCDBT `d/` files, zstd-compressed chunks) and restores the copy. Each flip ends
in one of: Orbax/TensorStore raises (the format noticed), the arrays read back unchanged (the byte
was not used), or they read back cleanly with other values: then `Checkpointer.verify` (the saved
checksums) must report the step as damaged. Also times the checksums over the state.

    python benchmarks/checkpoint_bitflips.py --flips 200 --out benchmarks/results/checkpoint_bitflips_cpu.json
"""
from __future__ import annotations

import argparse
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

from t5x_like import checkpointing, optimizers, partitioning, state_checksums, trainer
from t5x_like.models import DecoderConfig, build_model

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import records  # noqa: E402  # pylint: disable=wrong-import-position

MODEL = DecoderConfig(vocab_size=2048, embed_dim=128, num_layers=2, num_heads=4, num_kv_heads=4,
                      head_dim=32, mlp_dim=512, dtype='float32')


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--flips', type=int, default=200, help='bits flipped, one per restored copy')
  p.add_argument('--out', default=None)
  args = p.parse_args()

  mesh = partitioning.make_mesh(partitioning.MeshConfig())
  tx = optimizers.make_optimizer(optimizers.OptimizerConfig(), 100)
  batch = {'decoder_input_tokens': jax.ShapeDtypeStruct((8, 128), np.int32)}
  model = build_model(MODEL)
  abstract, shardings = trainer.state_shardings(model, tx, batch, mesh)
  state = trainer.create_state(model, tx, batch, mesh, shardings, jax.random.key(0))
  # Adam's moments start at zero (long runs of equal bytes compress to little): one step of real
  # gradients' size would do, random values stand in for them.
  rng = np.random.default_rng(0)
  state['opt_state'] = jax.tree.map(
      lambda x: jax.device_put(rng.standard_normal(x.shape).astype(x.dtype) * 1e-3, x.sharding)
      if x.ndim else x, state['opt_state'])
  abstract = partitioning.with_sharding(abstract, shardings)

  times = []
  for _ in range(5):
    t0 = time.perf_counter()
    sums = state_checksums.checksums(state)
    times.append(time.perf_counter() - t0)
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))

  work = pathlib.Path(tempfile.mkdtemp(prefix='bitflips_'))
  src = work / 'src'
  ck = checkpointing.Checkpointer(str(src), save_every=1)
  ck.save(1, state, None, force=True, checksums=sums)
  ck.wait()
  ck.close()
  step_dir = src / 'checkpoints' / '1'
  files = sorted(f for f in (step_dir / 'state').rglob('*') if f.is_file() and f.parent.name == 'd')
  sizes = [f.stat().st_size for f in files]
  total = sum(sizes)
  reference = jax.device_get(state)

  outcomes = {'read_error': 0, 'unchanged': 0, 'changed_caught': 0, 'changed_missed': 0}
  for i in range(args.flips):
    offset = (i * total) // args.flips
    k = 0
    while offset >= sizes[k]:
      offset -= sizes[k]
      k += 1
    run = work / 'copy'
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(src, run)
    target = run / files[k].relative_to(src)
    data = bytearray(target.read_bytes())
    data[offset] ^= 1 << (i % 8)
    target.write_bytes(bytes(data))
    ck = checkpointing.Checkpointer(str(run), save_every=1)
    try:
      restored = ck.restore(1, abstract)
    except Exception:  # pylint: disable=broad-except
      outcomes['read_error'] += 1
      ck.close()
      continue
    same = all(np.array_equal(a, b, equal_nan=True) for a, b in
               zip(jax.tree.leaves(jax.device_get(restored)), jax.tree.leaves(reference)))
    caught = ck.verify(1, restored) is not None
    ck.close()
    if same:
      outcomes['unchanged'] += 1
      assert not caught, f'flip {i}: unchanged arrays reported as damaged'
    else:
      outcomes['changed_caught' if caught else 'changed_missed'] += 1
  shutil.rmtree(work, ignore_errors=True)

  record = dict(records.record_header(), model=str(MODEL), state_bytes=state_bytes,
                data_files=len(files), data_bytes=total, flips=args.flips, outcomes=outcomes,
                checksum_s_median=statistics.median(times[1:]), checksum_s_first=times[0])
  print(record)
  records.write_record(args.out, record)


if __name__ == '__main__':
  main()
