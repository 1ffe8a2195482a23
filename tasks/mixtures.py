"""Mixtures of real languages for continual pretraining from an existing checkpoint: fixed rates,
temperature sampling, or the stage schedules of the cloned-language experiments.

`language_mixture(tasks=[anchor, other, ...])`:
  rates=[...]        fixed mixing rates (a seqio.Mixture);
  temperature=T      rates proportional to n_i ** (1/T), n_i = the task's training examples;
  schedule='0.1_0.9' the others' total probability per equal-length stage, split by their rates
                     (even by default), anchor (tasks[0]) gets the rest. Every task's text is cut
                     into `sequence_length` windows (as in cloned_lm_task) and the task of window
                     i is drawn statelessly from (seed, i): set DataConfig.pack = False.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence, Union

import gin
import numpy as np
import seqio
import tensorflow as tf

from tasks import lm, schedules
from tasks.registry import register_mixture


def _task(t) -> seqio.Task:
  return seqio.get_mixture_or_task(t) if isinstance(t, str) else t


def count_examples(task: seqio.Task, split: str = 'train') -> int:
  n = task.source.num_input_examples(split)
  if n is None:  # e.g. a TextLineDataSource: count once (pass `example_counts` for huge corpora)
    n = int(task.source.get_dataset(split=split, shuffle=False).reduce(0, lambda c, _: c + 1))
  return n


def temperature_rates(counts: Sequence[int], temperature: float) -> list[float]:
  c = np.asarray(counts, np.float64)
  r = c ** (1.0 / temperature)
  return (r / r.sum()).tolist()


def _scheduled_sample(datasets, rates, seed, *, probs, total, length, choice_seed, order):
  del rates, seed  # the schedule decides, statelessly from the window index
  # seqio hands the datasets over sorted by task name; `order` puts them back in the order given.
  windows = [lm.concat_and_chunk(datasets[i], length) for i in order]
  return tf.data.Dataset.choose_from_datasets(
      windows, schedules.language_choices(probs, total, choice_seed))


@gin.configurable(module='tasks.mixtures')
def language_mixture(name: str = gin.REQUIRED, tasks: Sequence = gin.REQUIRED, *,
                     rates: Optional[Sequence[float]] = None,
                     temperature: Optional[float] = None,
                     example_counts: Optional[Sequence[int]] = None,
                     schedule: Optional[Union[str, Sequence[float]]] = None,
                     train_steps: Optional[int] = None, batch_size: Optional[int] = None,
                     sequence_length: int = 512, seed: int = 0) -> seqio.Mixture:
  what = 'tasks.mixtures.language_mixture'
  tasks = [_task(t) for t in tasks]
  if len(tasks) < 2:
    raise ValueError(f'{what}.tasks: a mixture needs at least two tasks')
  if rates is not None and temperature is not None:
    raise ValueError(f'{what}: give rates or temperature, not both')
  if temperature is not None:
    counts = example_counts or [count_examples(t) for t in tasks]
    rates = temperature_rates(counts, temperature)
  rates = list(rates) if rates is not None else [1.0] * len(tasks)
  if len(rates) != len(tasks) or any(r < 0 for r in rates) or sum(rates) <= 0:
    raise ValueError(f'{what}.rates: need {len(tasks)} non-negative rates, got {rates}')
  if schedule is None:
    return register_mixture(name, list(zip([t.name for t in tasks], rates)))
  if set(tasks[0].output_features) != {'targets'}:
    raise ValueError(f'{what}.schedule: scheduled mixtures cut LM text into windows; '
                     f"{tasks[0].name} has features {sorted(tasks[0].output_features)}")
  if not train_steps or not batch_size:
    raise ValueError(f'{what}: a schedule needs train_steps and batch_size')
  p = schedules.parse_schedule(schedule, what)
  probs = schedules.check_probs(schedules.stage_probs(p, rates[1:]), what)
  by_name = sorted(t.name for t in tasks)
  sample_fn = functools.partial(_scheduled_sample, probs=probs, total=train_steps * batch_size,
                                length=sequence_length, choice_seed=seed,
                                order=[by_name.index(t.name) for t in tasks])
  return register_mixture(name, [(t.name, 1.0) for t in tasks], sample_fn=sample_fn)
