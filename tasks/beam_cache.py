"""Offline preprocessing of the project's tasks with Apache Beam (seqio's cache format).

seqio's own `cache_tasks_main` finds tasks by importing modules; ours are built by gin files, so
each Beam worker re-creates them from the parsed gin config text (shipped with the pipeline) before
it reads its shard. Everything else is seqio.beam_utils: the same transforms and output layout, so
`DataConfig.use_cached = True` (with `seqio.add_global_cache_dirs([DIR])`) reads the result.
"""
from __future__ import annotations

import functools
import os
from typing import Sequence

import seqio
import tensorflow as tf


def _register(config_text: str, task_name: str):
  if task_name in seqio.TaskRegistry.names():  # in-process runners share the registry
    return
  from tasks.__main__ import register_from_gin
  register_from_gin((), (), config_text=config_text)


def cache_tasks(task_names: Sequence[str], output_cache_dir: str, *, config_text: str,
                pipeline_options: str = '--runner=DirectRunner', min_shards: int = 1
                ) -> list[str]:
  import apache_beam as beam
  from seqio import beam_utils
  options = beam.options.pipeline_options.PipelineOptions(pipeline_options.split(','))
  out_dirs = []
  with beam.Pipeline(options=options) as pipeline:
    for name in task_names:
      task = seqio.TaskRegistry.get(name)
      if not task.supports_caching:
        raise ValueError(f'task {name} has no seqio.CacheDatasetPlaceholder: it cannot be cached')
      out = os.path.join(output_cache_dir, seqio.get_task_dir_from_name(name))
      tf.io.gfile.makedirs(out)
      out_dirs.append(out)
      for split in task.splits:
        label = f'{name}_{split}'
        pat = beam_utils.PreprocessTask(task, split,
                                        setup_fn=functools.partial(_register, config_text,
                                                                           name))
        num_shards = max(len(pat.shards), min_shards)
        examples = pipeline | f'{label}_pat' >> pat | f'{label}_shuffle' >> beam.Reshuffle()
        _ = examples | f'{label}_write' >> beam_utils.WriteExampleTfRecord(
            seqio.get_cached_tfrecord_prefix(out, split), num_shards=num_shards)
        _ = (examples | f'{label}_info' >> beam_utils.GetInfo(num_shards)
             | f'{label}_write_info' >> beam_utils.WriteJson(seqio.get_cached_info_path(out, split)))
        _ = (examples | f'{label}_stats' >> beam_utils.GetStats(task.output_features)
             | f'{label}_write_stats' >> beam_utils.WriteJson(
                 seqio.get_cached_stats_path(out, split)))
  for out in out_dirs:
    # seqio treats a task dir as cached once COMPLETED exists.
    with tf.io.gfile.GFile(os.path.join(out, 'COMPLETED'), 'w') as f:
      f.write('')
  return out_dirs
