"""The training loop through `trainer.fit`: loss falls, exact resume batch for batch, restore onto a
smaller mesh, gradient accumulation equals the full batch, a mismatched resume loses nothing."""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5x_like import checkpointing, data, losses, optimizers, partitioning, profiling, trainer
from t5x_like.models import DecoderConfig, EncDecConfig, build_model

MODEL = DecoderConfig(vocab_size=500, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      head_dim=8, mlp_dim=64, dtype='float32')


def _fit(model_dir, steps, task, *, model=MODEL, mesh=partitioning.MeshConfig(data=2, fsdp=2,
                                                                               tensor=2),
         lengths=None, **trainer_kw):
  kw = dict(log_every=1, checkpoint_every=5, eval_steps=2, async_checkpointing=True)
  eval_data = trainer_kw.pop('eval_data', None)
  log = trainer_kw.pop('log', lambda *a, **k: None)
  kw.update(trainer_kw)
  return trainer.fit(
      model_dir=str(model_dir), train_steps=steps, model_config=model,
      train_data=data.DataConfig(task, lengths or {'targets': 32}, batch_size=8, seed=3),
      # decay_steps fixed: the schedule must not depend on how far this invocation trains.
      eval_data=eval_data, optimizer_config=optimizers.OptimizerConfig(learning_rate=3e-3,
                                                                   warmup_steps=2, decay_steps=40),
      loss_config=losses.LossConfig(), mesh_config=mesh,
      trainer_config=trainer.TrainerConfig(**kw), log=log)


def test_loss_falls_and_every_eval_dataset_is_reported(lm_task, small_text, small_vocab, tmp_path):
  from tasks import lm
  other = lm.text_lm_task(name='test_small_lm_other', train_files=[small_text['validation']],
                          validation_files=[small_text['train']], vocabulary=small_vocab)
  evals = [data.DataConfig(t, {'targets': 32}, batch_size=8, split='validation', shuffle=False,
                           num_epochs=1) for t in (lm_task, other)]
  # (One checkpoint, at the end: this test is about the loss and the evaluations.)
  out = _fit(tmp_path / 'run', 40, lm_task, log_every=1, eval_data=evals, checkpoint_every=40)
  hist = dict(out['history'])
  first, last = np.mean([hist[s] for s in (1, 2, 3)]), np.mean([hist[s] for s in (38, 39, 40)])
  assert last < first - 1.0, (first, last)
  assert sorted(out['eval']) == ['test_small_lm', 'test_small_lm_other']
  a, b = out['eval']['test_small_lm'], out['eval']['test_small_lm_other']
  assert a['num_target_tokens'] > 0 and b['num_target_tokens'] > 0
  assert a['loss'] != b['loss'] and np.isfinite([a['loss'], b['loss']]).all()  # different text
  assert (tmp_path / 'run' / 'eval' / 'test_small_lm_other').is_dir()


def test_resume_continues_with_exactly_the_same_batches_and_losses(lm_task, tmp_path):
  straight = dict(_fit(tmp_path / 'a', 12, lm_task)['history'])
  first = dict(_fit(tmp_path / 'b', 7, lm_task)['history'])  # checkpoints at 5 and (final) 7
  resumed = dict(_fit(tmp_path / 'b', 12, lm_task)['history'])
  assert sorted(resumed) == list(range(8, 13))
  for s in range(1, 8):
    assert first[s] == straight[s]
  for s in range(8, 13):  # bit-exact: same batches, same dropout keys, same optimizer state
    assert resumed[s] == straight[s], (s, resumed[s], straight[s])


def test_restore_onto_a_four_device_mesh(lm_task, tmp_path):
  _fit(tmp_path / 'run', 5, lm_task)
  model = build_model(MODEL)
  tx = optimizers.make_optimizer(optimizers.OptimizerConfig(), 5)
  batch = {'decoder_input_tokens': jax.ShapeDtypeStruct((8, 32), np.int32)}
  big = partitioning.make_mesh(partitioning.MeshConfig(data=2, fsdp=2, tensor=2))
  small = partitioning.make_mesh(partitioning.MeshConfig(data=1, fsdp=2, tensor=2),
                                 devices=jax.devices()[4:])
  restored = {}
  for name, mesh in (('big', big), ('small', small)):
    abstract, sh = trainer.state_shardings(model, tx, batch, mesh)
    ck = checkpointing.Checkpointer(str(tmp_path / 'run'), save_every=5)
    restored[name] = ck.restore(5, partitioning.with_sharding(abstract, sh))
    ck.close()
  q = restored['small']['params']['layers']['mlp']['wi_0']['kernel']
  assert set(q.sharding.device_set) == set(jax.devices()[4:])
  assert int(restored['small']['step']) == 5
  for a, b in zip(jax.tree.leaves(restored['big']), jax.tree.leaves(restored['small'])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_gradient_accumulation_equals_full_batch(lm_task):
  model = build_model(MODEL)
  opt = optimizers.OptimizerConfig(learning_rate=1e-2, warmup_steps=0)
  tx, sched = optimizers.make_optimizer(opt, 10), optimizers.make_schedule(opt, 10)
  ds = data.get_dataset(data.DataConfig(lm_task, {'targets': 32}, batch_size=8), 'decoder')
  batch = {k: jnp.asarray(v) for k, v in next(iter(ds)).items()}
  abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
  state = trainer.init_fn(model, tx, abstract, jax.random.key(0))
  state = partitioning.unbox(state)
  outs = []
  for n in (1, 4):
    step = jax.jit(functools.partial(trainer.train_step, model=model, tx=tx, schedule=sched,
                                     loss_cfg=losses.LossConfig(), num_microbatches=n))
    outs.append(step(state, batch, jax.random.key(1)))
  (s1, m1), (s4, m4) = outs
  assert m1['loss'] == pytest.approx(float(m4['loss']), rel=1e-5)
  for a, b in zip(jax.tree.leaves(s1['params']), jax.tree.leaves(s4['params'])):
    # Adam divides by sqrt(v): fp32 summation-order noise in the gradients shows up as ~1e-6 here,
    # against updates of size lr = 1e-2.
    np.testing.assert_allclose(a, b, atol=2e-5)


def test_mismatched_resume_fails_clearly_and_keeps_the_checkpoint(lm_task, tmp_path):
  _fit(tmp_path / 'run', 5, lm_task)
  ckdir = tmp_path / 'run' / 'checkpoints'
  before = sorted(str(p.relative_to(ckdir)) for p in ckdir.rglob('*'))
  bigger = DecoderConfig(**{**MODEL.__dict__, 'embed_dim': 64})
  with pytest.raises(ValueError, match=r'model.json has other parameter shapes than this config: '
                     r'embed_dim: 32 \(run\) vs 64 \(this config\)'):
    _fit(tmp_path / 'run', 10, lm_task, model=bigger)
  assert sorted(str(p.relative_to(ckdir)) for p in ckdir.rglob('*')) == before
  # Without model.json (older run dirs) the checkpoint's own shapes are compared, leaf by leaf.
  os.remove(tmp_path / 'run' / 'model.json')
  with pytest.raises(checkpointing.CheckpointMismatch,
                     match=r'checkpoint at step 5 .* does not match this config: .*shape'):
    _fit(tmp_path / 'run', 10, lm_task, model=bigger)
  assert sorted(str(p.relative_to(ckdir)) for p in ckdir.rglob('*')) == before


def test_encdec_trains(prefix_lm_task, tmp_path):
  model = EncDecConfig(vocab_size=500, embed_dim=32, num_encoder_layers=1, num_decoder_layers=1,
                       num_heads=4, head_dim=8, mlp_dim=64, dtype='float32')
  hist = dict(_fit(tmp_path / 'run', 25, prefix_lm_task, model=model,
                   lengths={'inputs': 32, 'targets': 32}, checkpoint_every=25)['history'])
  assert hist[25] < hist[1] - 0.8


def test_profile_traces_the_asked_steps_and_says_where_their_time_went(lm_task, tmp_path):
  lines = []
  out = _fit(tmp_path / 'run', 6, lm_task, profile_first_step=3, profile_num_steps=2,
             log=lambda *a, **k: lines.append(' '.join(map(str, a))))
  assert sorted(dict(out['history'])) == [1, 2, 3, 4, 5, 6]
  trace, = (tmp_path / 'run' / 'train' / 'plugins' / 'profile').glob('*/*.xplane.pb')
  head = next(i for i, l in enumerate(lines) if l.startswith('profile: '))
  assert lines[head].startswith(f'profile: {trace} (host XLA threads, ') and 'ms summed' in lines[head]
  ops = lines[head + 1:head + 9]
  assert ops and all('%' in l and ' ms ' in l for l in ops), lines[head:head + 9]
  # A profiler that cannot start (here: another trace is running) gives the warning the trainer
  # prints, and traces nothing more: the run goes on untraced.
  profiler = profiling.StepProfiler(str(tmp_path / 'run2'), 2, 2)
  jax.profiler.start_trace(str(tmp_path / 'other'))
  try:
    assert profiler.before(1) is None
    warning = profiler.before(2)
  finally:
    jax.profiler.stop_trace()
  assert warning.startswith('WARNING: no profile: the profiler did not start'), warning
  assert not profiler.active and profiler.after(3, None) is None and profiler.close() is None
  assert not (tmp_path / 'run2').exists()
  with pytest.raises(ValueError, match='profile_first_step=-1'):
    _fit(tmp_path / 'bad', 2, lm_task, profile_first_step=-1)
  with pytest.raises(ValueError, match='profile_first_step=3 is past TRAIN_STEPS=2'):
    _fit(tmp_path / 'bad', 2, lm_task, profile_first_step=3)
