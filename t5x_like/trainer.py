"""Pure train/eval steps and the training loop.

`train_step` and `eval_step` are module-level pure functions of (state, batch); `Trainer` jits them with
explicit in/out shardings (state donated), and runs the loop: metrics, periodic eval, checkpoints,
preemption. State is a plain dict {'step', 'params', 'opt_state'} so Orbax and the HF converters see
ordinary nested dicts.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import time
from typing import Callable, Optional

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

from t5x_like import checkpointing
from t5x_like import compilation_cache
from t5x_like import data
from t5x_like import host_batches
from t5x_like import interrupts
from t5x_like import losses
from t5x_like import metrics as metrics_lib
from t5x_like import optimizers
from t5x_like import partitioning
from t5x_like import preemption as preemption_lib
from t5x_like import profiling
from t5x_like import provenance
from t5x_like import run_dir
from t5x_like import state_checksums
from t5x_like import storage_space
from t5x_like import watchdog as watchdog_lib
from t5x_like.models import build_model

State = dict


NONFINITE_POLICIES = ('stop', 'skip')


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TrainerConfig:
  log_every: int = 10
  eval_every: int = 0           # 0: evaluate only at the end (when an eval dataset is configured)
  eval_steps: int = 10          # batches per evaluation; -1: the whole split
  checkpoint_every: int = 100
  keep_checkpoints: Optional[int] = 3
  async_checkpointing: bool = True
  num_microbatches: int = 1     # gradient accumulation: the batch is split into this many pieces
  peak_flops_per_device: Optional[float] = None
  seed: int = 0
  # Reliability (docs/RELIABILITY.md).
  nonfinite_policy: str = 'stop'      # 'stop': exit 3 naming the step; 'skip': drop that update, count it
  preemption_grace_secs: float = 30.0  # SIGTERM -> save, commit and exit 75 within this (xpk: 30 s)
  step_timeout_secs: float = 60.0     # no step finished this long (after the first): exit 4; 0: off
  restore_step: Optional[int] = None  # resume from this step instead of the latest
  restore_fallback: bool = False      # latest checkpoint damaged: resume from the newest readable one
  # False: resume the model and optimizer, and read the data from its start, not from the position
  # saved with them (as T5X's restore_dataset=False): for another batch size, feature lengths,
  # mixture or export, or (seqio path) another number of hosts. The resume is then not exact.
  restore_data: bool = True
  # (S, K): when the run starts from step S, read and drop the K batches that follow it, once:
  # PaLM's remedy for a loss spike (resume ~100 steps before it, skip the 200-500 batches around it).
  # A later restart from another step skips nothing, so the setting can stay in the command.
  skip_data: Optional[tuple] = None
  # Profile (t5x_like/profiling.py): trace steps profile_first_step.. (profile_num_steps of them) on
  # process 0 into MODEL_DIR/train/plugins/profile (TensorBoard's Profile tab); 0: no trace.
  profile_first_step: int = 0
  profile_num_steps: int = 3

  def __post_init__(self):
    # Before any compile: a zero period was a ZeroDivisionError traceback at the first step,
    # eval_steps=0 a traceback once the whole run had trained, and a negative period was taken
    # silently (log_every=-1: every step).
    if self.nonfinite_policy not in NONFINITE_POLICIES:
      raise ValueError(f'TrainerConfig.nonfinite_policy={self.nonfinite_policy!r} must be one of '
                       f'{NONFINITE_POLICIES}')
    for name, ok, rule in (
        ('log_every', self.log_every >= 1, '>= 1 (a number of steps)'),
        ('checkpoint_every', self.checkpoint_every >= 1, '>= 1 (a number of steps)'),
        ('eval_every', self.eval_every >= 0, '>= 0 (0: evaluate at the end only)'),
        ('eval_steps', self.eval_steps >= 1 or self.eval_steps == -1,
         '>= 1 batches, or -1 for the whole split'),
        ('keep_checkpoints', self.keep_checkpoints is None or self.keep_checkpoints >= 1,
         '>= 1, or None to keep every checkpoint'),
        ('num_microbatches', self.num_microbatches >= 1, '>= 1'),
        ('peak_flops_per_device', self.peak_flops_per_device is None or
         self.peak_flops_per_device > 0, '> 0, or None (MFU from the device kind)'),
        ('preemption_grace_secs', self.preemption_grace_secs >= 0, '>= 0 seconds (0: off)'),
        ('step_timeout_secs', self.step_timeout_secs >= 0, '>= 0 seconds (0: off)'),
        ('profile_first_step', self.profile_first_step >= 0, '>= 0 (0: no trace)'),
        ('profile_num_steps', self.profile_num_steps >= 1, '>= 1')):
      if not ok:
        raise ValueError(f'TrainerConfig.{name}={getattr(self, name)!r} must be {rule}')
    if self.skip_data is not None and not (
        isinstance(self.skip_data, (tuple, list)) and len(self.skip_data) == 2 and
        all(isinstance(x, int) for x in self.skip_data) and
        self.skip_data[0] >= 0 and self.skip_data[1] >= 1):
      raise ValueError(f'TrainerConfig.skip_data={self.skip_data!r} must be None or (step, '
                       'batches): the step the run resumes from (>= 0) and how many batches to skip '
                       'after it (>= 1)')

  def check_run(self, train_steps: int, batch_size: int) -> None:
    """ValueError when a setting does not fit the run's TRAIN_STEPS or train batch."""
    if self.num_microbatches > 1 and batch_size % self.num_microbatches:
      raise ValueError(f'TrainerConfig.num_microbatches={self.num_microbatches} does not divide the '
                       f'train batch of {batch_size}')
    if self.profile_first_step > train_steps:
      raise ValueError(f'TrainerConfig.profile_first_step={self.profile_first_step} is past '
                       f'TRAIN_STEPS={train_steps}: nothing would be traced')


class Diverged(FloatingPointError):
  """A non-finite loss, gradient or state under the `stop` policy; nothing non-finite was saved."""


class DataExhausted(ValueError):
  """The training data ran out before TRAIN_STEPS (a finite num_epochs, or too few examples); a single
  process saves the step reached first. A restart would stop at the same place: not restartable."""


class Preempted(Exception):
  """SIGTERM or a preemption notice: the step in `.step` was saved and committed."""

  def __init__(self, msg: str, step: int):
    super().__init__(msg)
    self.step = step


def _dummy(abstract_batch):
  return {k: jnp.zeros(v.shape, v.dtype) for k, v in abstract_batch.items()}


def init_fn(model: nn.Module, tx: optax.GradientTransformation, abstract_batch, rng) -> State:
  variables = model.init({'params': rng, 'dropout': rng}, _dummy(abstract_batch), deterministic=True)
  params = variables['params']
  return {'step': jnp.zeros((), jnp.int32), 'params': params, 'opt_state': tx.init(params)}


def state_shardings(model, tx, abstract_batch, mesh):
  """Abstract (unboxed) state and its NamedShardings, derived from shapes alone: nothing is allocated."""
  boxed = jax.eval_shape(functools.partial(init_fn, model, tx, abstract_batch), jax.random.key(0))
  specs = nn.get_partition_spec(boxed)
  shardings = partitioning.logical_to_sharding(specs, mesh)
  abstract = partitioning.unbox(boxed)
  partitioning.check_divisible(abstract['params'], shardings['params'])
  return abstract, shardings


def create_state(model, tx, abstract_batch, mesh, shardings, rng) -> State:
  """Initialises directly into the sharded layout: each device only ever holds its own shards."""
  with mesh_context(mesh):
    return jax.jit(lambda r: partitioning.unbox(init_fn(model, tx, abstract_batch, r)),
                   out_shardings=shardings)(rng)


def _token_stats(model, params, batch, rng, loss_cfg: losses.LossConfig, deterministic: bool):
  rngs = None if deterministic else {'dropout': rng}
  targets = batch['decoder_target_tokens']
  weights = batch['decoder_loss_weights'].astype(jnp.float32)
  if loss_cfg.fused:
    hidden = model.apply({'params': params}, batch, deterministic=deterministic, rngs=rngs,
                         output='hidden')
    loss, z, correct = losses.fused_token_losses(
        hidden, model.output_kernel(params), targets, z_loss=loss_cfg.z_loss,
        label_smoothing=loss_cfg.label_smoothing, chunk_size=loss_cfg.chunk_size)
  else:
    logits = model.apply({'params': params}, batch, deterministic=deterministic, rngs=rngs)
    loss, z = losses.token_losses(logits, targets, z_loss=loss_cfg.z_loss,
                                  label_smoothing=loss_cfg.label_smoothing)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  stats = {'loss_sum': jnp.sum(loss * weights), 'z_loss_sum': jnp.sum(z * weights),
           'correct_sum': jnp.sum(correct * weights), 'weight_sum': jnp.sum(weights)}
  return stats['loss_sum'], stats


def _split_microbatches(batch, n: int):
  # Strided split (row i goes to microbatch i % n) so each microbatch stays spread over every
  # data-parallel device instead of living on 1/n of them.
  def split(x):
    x = x.reshape((x.shape[0] // n, n) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)
  return jax.tree.map(split, batch)


def train_step(state: State, batch: dict, rng: jax.Array, *, model: nn.Module,
               tx: optax.GradientTransformation, schedule: Callable, loss_cfg: losses.LossConfig,
               num_microbatches: int = 1):
  """One optimizer update. Gradients of the summed loss are accumulated over microbatches, then divided
  once by the whole batch's normaliser: the update equals the full-batch one."""
  params = state['params']
  rng = jax.random.fold_in(rng, state['step'])
  grad_fn = jax.grad(functools.partial(_token_stats, model, loss_cfg=loss_cfg, deterministic=False),
                     has_aux=True)
  if num_microbatches == 1:
    grads, stats = grad_fn(params, batch, rng)
  else:
    def body(carry, xs):
      mb, i = xs
      g, s = grad_fn(params, mb, jax.random.fold_in(rng, i))
      return jax.tree.map(jnp.add, carry, (g, s)), None
    zeros = (jax.tree.map(jnp.zeros_like, params),
             {k: jnp.zeros((), jnp.float32) for k in
              ('loss_sum', 'z_loss_sum', 'correct_sum', 'weight_sum')})
    (grads, stats), _ = jax.lax.scan(
        body, zeros, (_split_microbatches(batch, num_microbatches), jnp.arange(num_microbatches)))
  denom = losses.normalizer(batch['decoder_loss_weights'].astype(jnp.float32), loss_cfg)
  denom = jnp.maximum(denom, 1e-8)
  grads = jax.tree.map(lambda g: g / denom.astype(g.dtype), grads)
  updates, opt_state = tx.update(grads, state['opt_state'], params)
  new_state = {'step': state['step'] + 1, 'params': optax.apply_updates(params, updates),
               'opt_state': opt_state}
  weight = jnp.maximum(stats['weight_sum'], 1.0)
  metrics = {
      'loss': stats['loss_sum'] / denom,
      'z_loss': stats['z_loss_sum'] / denom,
      'cross_ent_loss': (stats['loss_sum'] - stats['z_loss_sum']) / weight,
      'accuracy': stats['correct_sum'] / weight,
      'grad_norm': optax.tree.norm(grads),
      'learning_rate': schedule(state['step']),
      'num_target_tokens': stats['weight_sum'],
  }
  return new_state, metrics


def guarded_train_step(state: State, batch: dict, rng: jax.Array, guard: dict, *,
                       skip_nonfinite: bool, **step_kw):
  """train_step plus an on-device finiteness record, read on the host only at log and save time.

  guard: {'first_nonfinite': step number of the first non-finite loss or gradient norm (-1: none),
  'nonfinite_steps': how many}. With skip_nonfinite, such a step leaves params and opt_state as they
  were (the step counter and the data still advance: the batch is skipped)."""
  new_state, metrics = train_step(state, batch, rng, **step_kw)
  ok = jnp.isfinite(metrics['loss']) & jnp.isfinite(metrics['grad_norm'])
  if skip_nonfinite:
    kept = jax.tree.map(lambda n, o: jnp.where(ok, n, o),
                        {'params': new_state['params'], 'opt_state': new_state['opt_state']},
                        {'params': state['params'], 'opt_state': state['opt_state']})
    new_state = {**new_state, **kept}
  first = guard['first_nonfinite']
  guard = {'first_nonfinite': jnp.where(ok | (first >= 0), first, state['step'] + 1),
           'nonfinite_steps': guard['nonfinite_steps'] + jnp.where(ok, 0, 1).astype(jnp.int32)}
  return new_state, {**metrics, 'nonfinite': jnp.where(ok, 0.0, 1.0)}, guard


def new_guard(nonfinite_steps: int = 0) -> dict:
  # Host numpy: building it runs nothing on a device (compile-only meshes have none to run on).
  return {'first_nonfinite': np.full((), -1, np.int32),
          'nonfinite_steps': np.full((), nonfinite_steps, np.int32)}


def all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def eval_step(params, batch: dict, *, model: nn.Module, loss_cfg: losses.LossConfig):
  """Sums over one batch; the caller adds them up over batches and divides at the end."""
  _, stats = _token_stats(model, params, batch, None, loss_cfg, deterministic=True)
  return stats


def summarize_eval(total: dict) -> dict:
  w = max(float(total['weight_sum']), 1.0)
  ce = (float(total['loss_sum']) - float(total['z_loss_sum'])) / w
  return {'loss': ce, 'accuracy': float(total['correct_sum']) / w,
          'perplexity': float(np.exp(min(ce, 50.0))), 'num_target_tokens': float(total['weight_sum'])}


class CompiledSteps:
  """train_step / eval_step jitted with explicit shardings for one mesh."""

  def __init__(self, model, tx, schedule, loss_cfg, mesh, shardings, num_microbatches: int,
               skip_nonfinite: bool = False):
    self.mesh = mesh
    batch_sh = partitioning.batch_sharding(mesh)
    rep = partitioning.replicated(mesh)
    self._train = jax.jit(
        functools.partial(guarded_train_step, model=model, tx=tx, schedule=schedule,
                          loss_cfg=loss_cfg, num_microbatches=num_microbatches,
                          skip_nonfinite=skip_nonfinite),
        in_shardings=(shardings, batch_sh, rep, rep), out_shardings=(shardings, rep, rep),
        donate_argnums=(0, 3))
    self._finite = jax.jit(all_finite, in_shardings=(shardings,), out_shardings=rep)
    self._rep = rep
    self._guard = None  # placed on first use: a compile-only mesh (the preflight's) has no buffers
    self._eval = jax.jit(functools.partial(eval_step, model=model, loss_cfg=loss_cfg),
                         in_shardings=(shardings['params'], batch_sh), out_shardings=rep)

  def _ctx(self):
    return mesh_context(self.mesh)

  def compile_train(self, abstract_state, abstract_batch, rng):
    with self._ctx():
      t0 = time.perf_counter()
      guard = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), new_guard())
      self._train = self._train.lower(abstract_state, abstract_batch, rng, guard).compile()
      return time.perf_counter() - t0

  @property
  def compiled_train(self):
    """After compile_train: the AOT-compiled step (memory_analysis, cost_analysis; the preflight)."""
    return self._train

  @property
  def guard(self):
    """The finiteness record of every step since this object was built (see guarded_train_step)."""
    if self._guard is None:
      self._guard = jax.device_put(new_guard(), self._rep)
    return self._guard

  def start_guard(self, nonfinite_steps: int):
    """A resumed run counts on from its checkpoint's skipped steps; the first non-finite step is
    this process's own (a run resumed under policy 'stop' must not stop for a step it skipped)."""
    self._guard = jax.device_put(new_guard(nonfinite_steps), self._rep)

  def train(self, state, batch, rng):
    """-> (state, metrics); updates self.guard on device (see guarded_train_step)."""
    with self._ctx():
      state, metrics, self._guard = self._train(state, batch, rng, self.guard)
      return state, metrics

  def state_is_finite(self, state) -> bool:
    with self._ctx():
      return bool(jax.device_get(self._finite(state)))

  def eval(self, params, batch):
    with self._ctx():
      return self._eval(params, batch)


def mesh_context(mesh) -> contextlib.ExitStack:
  """The mesh and the logical-axis rules, entered together (activation constraints need both)."""
  stack = contextlib.ExitStack()
  stack.enter_context(jax.set_mesh(mesh))
  stack.enter_context(nn.logical_axis_rules(partitioning.LOGICAL_AXIS_RULES))
  return stack


def _write_run_files(model_dir: str, resumed_from: Optional[int], model_config, train_data):
  """Next to the checkpoints: the operative gin config, headed by the source commit (a resumed run
  never overwrites the first), model.json (family + config, for exporters and evaluators; a resumed
  run with another rope_theta or dtype adds its config, keeping the one before for the steps it
  made) and the vocabulary."""
  if jax.process_index() != 0:
    return
  os.makedirs(model_dir, exist_ok=True)
  if resumed_from is None:
    run_dir.save_model_config(model_dir, model_config)
    data.save_vocabulary(train_data, os.path.join(model_dir, 'vocabulary'))
  elif os.path.exists(os.path.join(model_dir, 'model.json')):
    run_dir.save_model_config(model_dir, model_config, resumed_from=resumed_from)
  name = 'config.gin' if resumed_from is None else f'config_resumed_at_{resumed_from}.gin'
  path = os.path.join(model_dir, name)
  if resumed_from is None and os.path.exists(path):
    path = os.path.join(model_dir, f'config.{int(time.time())}.gin')
  with open(path, 'w') as f:
    # The code as well as the config: a resumed segment writes its own file, so code that changed
    # between segments of one run shows here.
    f.write(provenance.run_file_header(jax.__version__) + '\n')
    f.write(gin.operative_config_str())


def fit(*, model_dir: str, train_steps: int, model_config, train_data, eval_data, optimizer_config,
        loss_config, mesh_config, trainer_config: TrainerConfig,
        init_params_from: Optional[str] = None,
        on_setup_done: Optional[Callable[[], None]] = None, log=print) -> dict:
  """Builds everything, restores the latest checkpoint if there is one, and trains to train_steps.

  eval_data: None, a DataConfig, or a list of them (each logged under eval/<task name>).
  Returns the last logged train metrics, 'history' (step, loss) of every logged step, and 'eval'
  ({task name: metrics}) when evaluated.
  """
  cfg = trainer_config
  is_main = jax.process_index() == 0
  say = log if is_main else (lambda *a, **k: None)
  if train_steps < 1:
    raise ValueError(f'TRAIN_STEPS={train_steps} must be >= 1')
  cfg.check_run(train_steps, train_data.batch_size)

  # --- set-up: everything here is validated before any compile -------------------------------------
  mesh = partitioning.make_mesh(mesh_config)
  dp = mesh.shape['data'] * mesh.shape['fsdp']
  # Several eval datasets (e.g. one per language) are logged side by side under eval/<task>.
  evals = [] if eval_data is None else (
      list(eval_data) if isinstance(eval_data, (list, tuple)) else [eval_data])
  for name, dcfg in [('train', train_data)] + [('eval', e) for e in evals]:
    if dcfg is not None and (dcfg.batch_size // jax.process_count()) % max(
        dp // jax.process_count(), 1):
      raise ValueError(f'{name} DataConfig.batch_size={dcfg.batch_size} does not divide over the '
                       f"{dp} data-parallel devices (mesh data x fsdp)")
  family = model_config.family
  model = build_model(model_config)
  batch_sh = partitioning.batch_sharding(mesh)
  iterator = data.open_iterator(train_data, family, batch_sh,
                                vocab_size=model_config.vocab_size,
                                num_batches=train_steps)
  abstract_batch = iterator.abstract_batch(train_data.batch_size)
  for e in evals:  # an eval export's meta.json is checked now, not at the first evaluation
    if e.export_dir is not None:
      data.open_iterator(e, family, batch_sh, vocab_size=model_config.vocab_size)
  schedule = optimizers.make_schedule(optimizer_config, train_steps)
  tx = optimizers.make_optimizer(optimizer_config, train_steps)
  abstract_state, shardings = state_shardings(model, tx, abstract_batch, mesh)
  try:
    ckpt_dir = checkpointing.checkpoint_dir(model_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    storage_space.check_room(ckpt_dir, storage_space.state_bytes(abstract_state),
                             cfg.keep_checkpoints, say)
    ckpt = checkpointing.Checkpointer(model_dir, save_every=cfg.checkpoint_every,
                                      keep=cfg.keep_checkpoints, async_save=cfg.async_checkpointing,
                                      log=say)
  except OSError as e:  # (read-only, or a parent that cannot hold folders)
    raise ValueError(f'MODEL_DIR={model_dir!r}: cannot make its checkpoint folder: {e}') from e
  profiler = profiling.StepProfiler(  # (the traced steps end at the last step at the latest)
      os.path.join(model_dir, 'train'), cfg.profile_first_step,
      min(cfg.profile_num_steps, train_steps - cfg.profile_first_step + 1),
      enabled=jax.process_index() == 0)
  rng = jax.random.key(cfg.seed)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_state['params']))
  say(f'model: {family}, {n_params / 1e6:.2f}M parameters | mesh {dict(mesh.shape)} on '
      f'{jax.device_count()} {jax.devices()[0].platform} devices, {jax.process_count()} host(s) | '
      f'data: {train_data.name}, batch {train_data.batch_size} x '
      f'{dict(train_data.task_feature_lengths)}')
  def write_vocab(directory):
    data.save_vocabulary(train_data, directory)
  vocab_source = f'the vocabulary of {train_data.name}'
  # A set-up error from here on closes the checkpointer first: Orbax's clean-up of temporary folders,
  # started when it was made, would otherwise fail at interpreter exit with a traceback of its own.
  try:
    if ckpt.all_steps() or cfg.restore_step is not None:
      run_dir.check_model_config(model_dir, model_config, f'resuming {model_dir}', log=say)
      run_dir.check_vocabulary(model_dir, write_vocab, vocab_source, f'resuming {model_dir}')
      state, latest = _restore(ckpt, cfg, partitioning.with_sharding(abstract_state, shardings),
                               iterator.checkpoint if cfg.restore_data else None, say)
      if not cfg.restore_data:
        say(f'data: read from its start, not from the position saved at step {latest} '
            '(TrainerConfig.restore_data=False)')
    else:
      latest = None
      state = create_state(model, tx, abstract_batch, mesh, shardings, rng)
      if init_params_from:
        what = f'train.init_params_from={init_params_from!r}'
        run_dir.check_model_config(init_params_from, model_config, what, log=say)
        run_dir.check_vocabulary(init_params_from, write_vocab, vocab_source, what)
        try:
          params, from_step = checkpointing.restore_params(
              init_params_from, partitioning.with_sharding(abstract_state['params'],
                                                           shardings['params']))
        except Exception as e:  # damaged, or saved with other shapes: the message says which
          raise ValueError(f'train.init_params_from={init_params_from!r}: cannot restore its '
                           f'parameters: {str(e).splitlines()[0][:500]}') from e
        state['params'] = params
        say(f'Initialised parameters from {init_params_from} (step {from_step}); optimizer state fresh')
  except BaseException:
    ckpt.close()
    raise
  start = int(jax.device_get(state['step']))
  if cfg.skip_data is not None:
    at, n = cfg.skip_data
    if start == at:
      try:
        iterator.skip(n)
      except ValueError as e:
        ckpt.close()
        raise ValueError(f'TrainerConfig.skip_data={tuple(cfg.skip_data)}: {e}') from e
      say(f'data: skipped the {n} batches after step {at} (TrainerConfig.skip_data)')
    else:
      say(f'note: TrainerConfig.skip_data={tuple(cfg.skip_data)} not applied: the run starts from '
          f'step {start}, not {at}')
  _write_run_files(model_dir, latest, model_config, train_data)
  if on_setup_done:
    on_setup_done()

  # --- compile and train -----------------------------------------------------------------------------
  if start >= train_steps:
    say(f'already at step {start} >= TRAIN_STEPS={train_steps}: nothing to train')
    ckpt.close()
    return {}
  steps = CompiledSteps(model, tx, schedule, loss_config, mesh, shardings, cfg.num_microbatches,
                        skip_nonfinite=cfg.nonfinite_policy == 'skip')
  if latest is not None:  # the count of skipped steps runs over the whole run, not this process
    try:
      counters = ckpt.counters(latest)
    except Exception as e:  # pylint: disable=broad-except  # a count is not worth stopping a run for
      say(f'WARNING: the counters saved with step {latest} are unreadable ({str(e)[:200]}); the '
          'count of skipped non-finite steps starts again at 0')
      counters = {}
    steps.start_guard(nonfinite_steps=int(counters.get('nonfinite_steps', 0)))
    _say_if_the_schedule_changed(counters, schedule, latest, say)
  abstract_in = partitioning.with_sharding(abstract_state, shardings)
  abstract_b = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sh)
                for k, v in abstract_batch.items()}
  with compilation_cache.lookups() as cache:
    secs = steps.compile_train(abstract_in, abstract_b, rng)
  note = compilation_cache.describe(cache)
  say(f'compiled train step in {secs:.1f}s{f" ({note})" if note else ""}; training steps '
      f'{start + 1}..{train_steps}')
  target_len = abstract_batch['decoder_target_tokens'].shape[1]
  tokens_per_step = train_data.batch_size * target_len
  logger = metrics_lib.MetricsLogger(model_dir, train_steps,
                                     model_config.flops_per_token(target_len),
                                     metrics_lib.peak_flops_per_device(cfg.peak_flops_per_device))
  logger.start(start)
  last: dict = {}
  history: list = []
  window: list = []
  step = start
  ckpt_blocked = None  # seconds the loop waited in periodic saves since the last log line
  preemption = preemption_lib.PreemptionWatcher(cfg.preemption_grace_secs, say)
  dog = watchdog_lib.StepWatchdog(cfg.step_timeout_secs)
  saved_step = start

  def save() -> float:
    """Saves `step` (asynchronously); returns the seconds the loop waited."""
    nonlocal saved_step
    t_save = time.perf_counter()
    with dog.paused():  # (a Ctrl-C here stops the loop after this save: interrupts.py)
      # Nothing non-finite is ever written, so rotation can only drop finite checkpoints for newer
      # finite ones: the last good checkpoint always survives.
      g = jax.device_get(steps.guard)
      _check_finite(cfg, g, ckpt, model_dir)
      if not steps.state_is_finite(state):
        raise Diverged(_diverged_message(f'the state after step {step} holds NaN or Inf '
                                         '(loss and gradients were finite)', ckpt, model_dir))
      ckpt.save(step, state, iterator.checkpoint, force=True,
                counters={'nonfinite_steps': int(g['nonfinite_steps']),
                          'next_learning_rate': float(schedule(step))},
                checksums=state_checksums.checksums(state))
    saved_step = step
    # What an asynchronous save costs the loop: the finiteness checks (a device sync) and Orbax's
    # copy of the state to host memory; the writing happens in the background.
    return time.perf_counter() - t_save

  one_process = jax.process_count() == 1
  # A Ctrl-C from here on stops the loop at a step boundary: with several processes, at a log step,
  # where they agree on it (interrupts.py).
  ctrl_c = interrupts.StopAtStepBoundary(
      'after this step' if one_process else
      f'with the other processes at the next log step (every {cfg.log_every} steps)')
  try:
    while step < train_steps:
      if one_process or step == start or step % cfg.log_every == 0:
        _stop_together_if_asked()
      try:
        batch = next(iterator)
      except StopIteration:
        # One process keeps the steps trained since the last checkpoint. Processes may run out at
        # different steps (seqio reads a shard per host) and a save is collective: with several,
        # the one that ran out stops alone and the last checkpoint stands.
        if one_process and saved_step != step:
          save()
        with dog.paused():
          ckpt.wait()
        latest = ckpt.latest_step()
        raise DataExhausted(
            f'training data {train_data.name} ran out at step {step + 1}: no full batch of '
            f'{train_data.batch_size} left (num_epochs set, or too few examples for TRAIN_STEPS='
            f'{train_steps}?); ' + (f'step {latest} is saved in {checkpointing.checkpoint_dir(model_dir)}'
                                    if latest is not None else 'no checkpoint was saved')) from None
      warning = profiler.before(step + 1)
      if warning:
        say(warning)
      state, m = steps.train(state, batch, rng)
      step += 1
      dog.dispatched(step, m['loss'])
      window.append(m)
      log_now = step % cfg.log_every == 0 or step == train_steps
      if log_now:
        host, g = jax.device_get((window, steps.guard))
        _check_finite(cfg, g, ckpt, model_dir)
        ckpt.check_for_errors()
        finite = [w for w in host if not w['nonfinite']] or host
        avg = {k: float(np.mean([w[k] for w in finite])) for k in finite[0] if k != 'nonfinite'}
        avg['learning_rate'] = float(host[-1]['learning_rate'])
        if cfg.nonfinite_policy == 'skip':
          avg['nonfinite_skipped'] = float(g['nonfinite_steps'])
        if ckpt_blocked is not None:
          avg['checkpoint_blocked_s'], ckpt_blocked = ckpt_blocked, None
        last = logger.log_train(step, avg, tokens_per_step)
        history.append((step, avg['loss']))
        window = []
      if profiler.active and step == profiler.last:
        with dog.paused():
          _report_profile(profiler.after(step, (state, m)), say)
        logger.start(step)  # writing and reading the trace is not step time
      if evals and cfg.eval_every and step % cfg.eval_every == 0 and step < train_steps:
        with dog.paused():
          last['eval'] = run_evals(steps, state['params'], evals, family, batch_sh, cfg.eval_steps,
                                   logger, step)
        logger.start(step)  # eval time is not step time
      preempted = step < train_steps and preemption.reached(step, log_now)
      if step == train_steps or preempted or ckpt.due(step):
        ckpt_blocked = (ckpt_blocked or 0.) + save()
      if preempted:
        with dog.paused():
          ckpt.wait()
        ckpt.close()
        msg = (f'preempted at step {step}: checkpoint saved and committed in '
               f'{checkpointing.checkpoint_dir(model_dir)}; exiting to be restarted')
        say(msg)
        raise Preempted(msg, step)
    if evals and step == train_steps:
      with dog.paused():
        last['eval'] = run_evals(steps, state['params'], evals, family, batch_sh, cfg.eval_steps,
                                 logger, step)
    with dog.paused():
      ckpt.wait()
  except KeyboardInterrupt as e:
    # Ctrl-C (the first stops the loop at a step boundary: interrupts.py). A save still being written
    # in the background would be cut off when the interpreter exits (and Orbax reports that at
    # length): it is finished first, unless Ctrl-C comes again. (With several processes, only when
    # they stopped together: a save's commit waits for every process, and after a second Ctrl-C they
    # may have stopped at different steps, so it could wait forever.)
    together = one_process or isinstance(e, interrupts.StoppedTogether)
    abandoned = False
    if together and ckpt.manager.is_saving_in_progress():
      say(f'interrupted after step {step}: finishing the checkpoint being written (Ctrl-C again to '
          'abandon it)')
      with dog.paused():
        try:
          ckpt.wait()
        except KeyboardInterrupt:
          abandoned = True
    latest = ckpt.latest_step()
    if together and not abandoned:
      # Closed as after a finished run or a preemption: left open, Orbax's manager (its threads, the
      # arrays of its last save) was only freed by the interpreter's shutdown, after jax's runtime.
      with contextlib.suppress(KeyboardInterrupt):
        ckpt.close()
    say(f'interrupted after step {step}; the last checkpoint is ' +
        (f'step {latest} in {checkpointing.checkpoint_dir(model_dir)}' if latest is not None
         else 'none'))
    raise
  finally:
    ctrl_c.close()
    dog.close()
    preemption.close()
    if profiler.active:  # stopped inside the traced steps: keep what was traced
      profiler.close()
    logger.close()  # preempted, diverged or failed too: no event file is left open in this process
    # ... and no lock: a caller in the same process (a notebook, a test) may start the next trainer
    # on this MODEL_DIR after an exception. (A process's end drops it too.)
    ckpt.release_lock()
  ckpt.close()
  last['history'] = history
  say(f'done at step {step}. TensorBoard: tensorboard --logdir {model_dir} | checkpoints: '
      f'{checkpointing.checkpoint_dir(model_dir)}')
  return last


def _report_profile(trace: Optional[str], say) -> None:
  if trace is None:
    say('WARNING: the profiler wrote no trace file')
    return
  try:
    for line in profiling.summary_lines(profiling.summarize(trace)):
      say(line)
  except Exception as e:  # pylint: disable=broad-except  # a summary is not worth stopping a run for
    say(f'profile: {trace} (no summary: {type(e).__name__}: {str(e)[:200]})')


def _restore(ckpt, cfg: TrainerConfig, abstract_state, data_checkpoint, say):
  """(state, step) from the latest checkpoint, TrainerConfig.restore_step, or (restore_fallback) the
  newest readable one. Checkpoints newer than the one restored are set aside, not deleted."""
  available = ckpt.all_steps()
  where = ckpt.directory
  if cfg.restore_step is not None:
    if cfg.restore_step not in available:
      raise ValueError(f'TrainerConfig.restore_step={cfg.restore_step}: no checkpoint of that step '
                       f'in {where} (found {available or "none"})')
    candidates = [cfg.restore_step]
  else:
    candidates = sorted(available, reverse=True)
  for i, s in enumerate(candidates):
    say(f'Resuming from checkpoint at step {s} in {where}')
    error = None
    try:
      state = ckpt.restore(s, abstract_state, data_checkpoint)
    except Exception as e:  # pylint: disable=broad-except  # classified below
      error = ckpt.diagnose(s, abstract_state, e)
      if error is not e:
        error.__cause__ = e
    if partitioning.all_processes_have(error is None):
      # Arrays that read back without an error can still hold other bits than were saved.
      error = ckpt.verify(s, state)
    if partitioning.all_processes_have(error is None):
      newer = [x for x in available if x > s]
      if newer:
        dest = ckpt.set_aside(newer)
        say(f'WARNING: checkpoints of steps {newer} are newer than step {s}: moved to {dest} so '
            f'that training from step {s} does not overwrite them')
      return state, s
    state = None  # freed before the next candidate is read: two states may not fit the devices
    if error is None:
      error = checkpointing.CheckpointDamaged(f'checkpoint at step {s} in {where} could not be '
                                              'read on another host (see its log)')
    others = [x for x in available if x < s]
    if isinstance(error, checkpointing.CheckpointMismatch) or not cfg.restore_fallback or \
        i + 1 == len(candidates):
      hint = ''
      if isinstance(error, checkpointing.CheckpointDamaged):
        hint = (f'; resume from an earlier step with --restore_step={others[-1]} (or set '
                f'TrainerConfig.restore_fallback=True / --restore_fallback)' if others else
                '; no earlier checkpoint to fall back to')
      elif isinstance(error.__cause__, host_batches.PositionMismatch):
        hint = ('; resume with the data settings it was saved with, or set '
                'TrainerConfig.restore_data=False to take the model and optimizer from it and read '
                'the data from its start')
      raise type(error)(str(error) + hint) from error.__cause__
    say(f'WARNING: {error}; falling back to step {candidates[i + 1]} '
        '(TrainerConfig.restore_fallback=True)')
  raise AssertionError('unreachable')


def _say_if_the_schedule_changed(counters: dict, schedule, latest: int, say) -> None:
  """A note when the step after the checkpoint gets another learning rate than the run would have
  given it: a resume with another TRAIN_STEPS (which the decay follows while decay_steps is None),
  learning rate or warmup bends the curve there, which is easy to miss in a plot."""
  before = counters.get('next_learning_rate')
  now = float(schedule(latest))
  if before is None or abs(now - before) <= 1e-6 * max(abs(before), 1e-12):
    return
  say(f'note: step {latest + 1} trains with learning rate {now:.4g} under this config; the run was '
      f'going on with {before:.4g} (OptimizerConfig or TRAIN_STEPS changed; the decay follows '
      'TRAIN_STEPS unless OptimizerConfig.decay_steps is set)')


def _diverged_message(what: str, ckpt, model_dir: str) -> str:
  ckpt.wait()
  good = ckpt.latest_step()
  last = (f'last good checkpoint: step {good} in {checkpointing.checkpoint_dir(model_dir)} (no '
          'checkpoint holding NaN/Inf was written)' if good is not None else
          'no checkpoint was written')
  earlier = ''
  if good is not None:
    earlier = (', or resume from an earlier step S and skip the batches after it (PaLM\'s remedy '
               'for a loss spike): --restore_step=S --gin.TrainerConfig.skip_data="(S, 200)"')
  return (f'{what}; {last}. Lower the learning rate or set TrainerConfig.nonfinite_policy="skip", '
          f'then run again to resume from it{earlier}')


def _check_finite(cfg: TrainerConfig, guard: dict, ckpt, model_dir: str) -> None:
  first = int(guard['first_nonfinite'])
  if first >= 0 and cfg.nonfinite_policy == 'stop':
    raise Diverged(_diverged_message(f'non-finite loss or gradient at step {first} (policy stop)',
                                     ckpt, model_dir))


def _stop_together_if_asked() -> None:
  """StoppedTogether on every process if a Ctrl-C was asked of any (one all-gather when there are
  several)."""
  if not partitioning.all_processes_have(not interrupts.asked()):
    raise interrupts.StoppedTogether


def run_evals(steps, params, evals, family, batch_sh, max_batches, logger, step) -> dict:
  out = {}
  for e in evals:
    out[e.name] = evaluate(steps, params, e, family, batch_sh, max_batches)
    logger.log_eval(step, e.name, out[e.name])
  return out


def evaluate(steps: CompiledSteps, params, eval_data, family: str, batch_sh, max_batches: int) -> dict:
  it = data.open_iterator(eval_data, family, batch_sh)
  batches = it.local_batches()
  total = None
  i = 0
  while max_batches < 0 or i < max_batches:
    local = next(batches, None)
    # Hosts' shards can differ by a batch: they stop together, or the others wait forever. And an
    # eval can take minutes: a Ctrl-C asked during one stops it (on every process at this batch).
    have, none_asked = partitioning.on_every_process(local is not None, not interrupts.asked())
    if not none_asked:
      raise interrupts.StoppedTogether
    if not have:
      break
    s = steps.eval(params, it.to_global(local))
    i += 1
    total = s if total is None else jax.tree.map(jnp.add, total, s)
  if total is None:
    raise ValueError(f'eval dataset {eval_data.name} ({eval_data.split}) gave no full batch of '
                     f'{eval_data.batch_size}')
  return summarize_eval(jax.device_get(total))
