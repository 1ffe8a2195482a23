"""Orbax checkpoints that hold the train state and the data-iterator position together.

Layout: MODEL_DIR/checkpoints/<step>/{state, data}/. `state` is the sharded {step, params, opt_state}
pytree (StandardSave, async); `data` is the position in the data, saved by whatever the data module
hands over (`data_checkpoint`: an object with save_args() / restore_args() -> orbax CheckpointArgs and
restored(value)): one tf.data iterator checkpoint per host on the seqio path (data_seqio.py), the next
global batch as JSON on the export path (data_grain.py). Either way a resumed run continues with
exactly the next batches.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from etils import epath


def checkpoint_dir(model_dir: str) -> epath.Path:
  # Orbax wants absolute paths; users write MODEL_DIR='runs/x'. (gs:// and other URLs pass through.)
  if '://' not in str(model_dir):
    model_dir = os.path.abspath(model_dir)
  return epath.Path(model_dir) / 'checkpoints'


class Checkpointer:
  """A CheckpointManager that saves every `save_every` steps, keeps the last `keep`."""

  def __init__(self, model_dir: str, *, save_every: int, keep: Optional[int] = 3,
               async_save: bool = True):
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=save_every, max_to_keep=keep, create=True,
        enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(checkpoint_dir(model_dir), options=options)

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_checkpoint: Optional[Any],
           force: bool = False) -> bool:
    items = {'state': ocp.args.StandardSave(state)}
    if data_checkpoint is not None:
      items['data'] = data_checkpoint.save_args()
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, step: int, abstract_state: Any,
              data_checkpoint: Optional[Any] = None) -> Any:
    items = {'state': ocp.args.StandardRestore(abstract_state)}
    if data_checkpoint is not None:
      items['data'] = data_checkpoint.restore_args()
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    if data_checkpoint is not None:
      data_checkpoint.restored(restored['data'])
    return restored['state']

  def reached_preemption(self, step: int) -> bool:
    return self.manager.reached_preemption(step)

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def restore_params(model_dir: str, abstract_params: Any, step: Optional[int] = None):
  """Restores only the parameters of a run (for evaluation and export): no optimizer state is read."""
  mngr = ocp.CheckpointManager(checkpoint_dir(model_dir))
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'no checkpoint in {checkpoint_dir(model_dir)}')
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(
          item={'params': abstract_params},
          restore_args=jax.tree.map(_restore_arg, {'params': abstract_params}),
          partial_restore=True)))
  return restored['state']['params'], step


def _restore_arg(a):
  if isinstance(a, jax.ShapeDtypeStruct) and getattr(a, 'sharding', None) is not None:
    return ocp.ArrayRestoreArgs(sharding=a.sharding, global_shape=a.shape, dtype=a.dtype)
  return ocp.RestoreArgs(restore_type=None)
