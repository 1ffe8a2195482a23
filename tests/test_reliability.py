"""Issue 12: preemption, divergence, run-dir identity, damaged checkpoints, bad input (dead peers and
real processes: test_reliability_processes.py).

Each test reproduces one failure mode of a weekend run on a tiny model (8 fake CPU devices) and checks
that it ends in one line that says what happened, that nothing already saved is lost, and that no
checkpoint holds NaN or another vocabulary.
"""
import gc
import json
import logging
import os
import re
import shutil
import signal
import sys
import time
import types

import gin
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import steps_on_disk
from t5x_like import checkpointing, data, exit_codes, interrupts, losses, optimizers, partitioning
from t5x_like import run_dir, train, trainer
from t5x_like.models import DecoderConfig, EncDecConfig, build_model
from tasks import sources, vocab as vocab_lib

MODEL = DecoderConfig(vocab_size=500, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      head_dim=8, mlp_dim=64, dtype='float32')
MESH = partitioning.MeshConfig(data=2, fsdp=2, tensor=2)


def _fit(model_dir, steps, task, *, lr=3e-3, model=MODEL, init_params_from=None, num_epochs=None,
         batch_size=8, log=lambda *a, **k: None, **trainer_kw):
  kw = dict(log_every=1, checkpoint_every=2, async_checkpointing=True)
  kw.update(trainer_kw)
  return trainer.fit(
      model_dir=str(model_dir), train_steps=steps, model_config=model,
      init_params_from=None if init_params_from is None else str(init_params_from),
      train_data=data.DataConfig(task, {'targets': 32}, batch_size=batch_size, seed=3,
                                 num_epochs=num_epochs), eval_data=None,
      optimizer_config=optimizers.OptimizerConfig(learning_rate=lr, warmup_steps=2, decay_steps=40),
      loss_config=losses.LossConfig(), mesh_config=MESH,
      trainer_config=trainer.TrainerConfig(**kw), log=log)


def _restore_all(model_dir, model=MODEL):
  """Every checkpoint of a run, restored with the abstract state of `model`."""
  tx = optimizers.make_optimizer(optimizers.OptimizerConfig(), 10)
  batch = {'decoder_input_tokens': jax.ShapeDtypeStruct((8, 32), np.int32)}
  mesh = partitioning.make_mesh(MESH)
  abstract, sh = trainer.state_shardings(build_model(model), tx, batch, mesh)
  ck = checkpointing.Checkpointer(str(model_dir), save_every=1)
  out = {s: ck.restore(s, partitioning.with_sharding(abstract, sh)) for s in ck.all_steps()}
  ck.close()
  return out


def _open_files_under(directory):
  """The files under `directory` that this process holds open (Linux: /proc/self/fd)."""
  fds = os.listdir('/proc/self/fd')
  paths = [os.path.realpath(os.path.join('/proc/self/fd', fd)) for fd in fds]
  return [p for p in paths if p.startswith(str(os.path.realpath(directory)) + os.sep)]


# --- Ctrl-C ------------------------------------------------------------------------------------------

def test_ctrl_c_during_the_checks_before_a_save_still_saves_that_step(lm_task, tmp_path, monkeypatch):
  # The checks before a save wait for the step's computation (a device sync) and checksum the state:
  # a Ctrl-C that landed there lost that step's save. It is now held until the save is under way,
  # and the trainer finishes the save.
  real_checksums = trainer.state_checksums.checksums
  def checksums_with_ctrl_c(state):
    if int(state['step']) == 4:
      os.kill(os.getpid(), signal.SIGINT)
    return real_checksums(state)
  monkeypatch.setattr(trainer.state_checksums, 'checksums', checksums_with_ctrl_c)
  closed = []
  real_close = trainer.checkpointing.Checkpointer.close
  def close(self):
    closed.append(self.manager.is_saving_in_progress())
    real_close(self)
  monkeypatch.setattr(trainer.checkpointing.Checkpointer, 'close', close)
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    with pytest.raises(KeyboardInterrupt):
      _fit(tmp_path / 'run', 10, lm_task, checkpoint_every=4)
  finally:
    signal.signal(signal.SIGINT, previous)
  # ... and closes the checkpoint manager, as a finished run does, rather than leave it (its threads,
  # the arrays of its last save) to the interpreter's shutdown.
  assert closed == [False]
  assert steps_on_disk(tmp_path / 'run') == [1, 4]
  assert sorted(p.name for p in (tmp_path / 'run' / 'checkpoints').iterdir()) == ['1', '4']


@pytest.mark.parametrize('handler, signals, steps_run', [
    (signal.default_int_handler, 1, 3),  # the step it came in ends, then the loop stops
    (signal.default_int_handler, 2, 2),  # the second goes through at once
    (signal.SIG_IGN, 1, 10)])  # a process that ignores SIGINT (started in the background) trains on
def test_the_first_ctrl_c_stops_the_loop_at_a_step_boundary(handler, signals, steps_run, lm_task,
                                                            tmp_path, monkeypatch):
  # Raised wherever the main thread was, KeyboardInterrupt could land in Python that jax's, TF's or
  # Orbax's C++ had called and leave native state corrupt (interrupts.py): a sweep run that was passed
  # one Ctrl-C died of SIGSEGV or SIGABRT instead of stopping. The first Ctrl-C now only asks.
  real_train = trainer.CompiledSteps.train
  calls, said = [], []

  def train_with_ctrl_c(self, *args):
    if len(calls) == 2:
      for _ in range(signals):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(3):  # (its handler runs here, inside the step)
          pass
    calls.append(1)
    return real_train(self, *args)

  monkeypatch.setattr(trainer.CompiledSteps, 'train', train_with_ctrl_c)
  previous = signal.signal(signal.SIGINT, handler)
  try:
    if steps_run == 10:
      _fit(tmp_path / 'run', 10, lm_task)
    else:
      with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path / 'run', 10, lm_task, log=said.append)
      assert said[-1].startswith(f'interrupted after step {steps_run}; the last checkpoint is step 2')
    assert signal.getsignal(signal.SIGINT) is handler  # (the trainer's own is gone)
  finally:
    signal.signal(signal.SIGINT, previous)
  assert len(calls) == steps_run


@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')  # (the swallowing)
def test_a_ctrl_c_that_python_swallows_in_a_gc_callback_still_stops_the_run(lm_task, tmp_path,
                                                                           monkeypatch):
  # Python ignores a KeyboardInterrupt raised inside a garbage-collection callback (jax registers
  # one): seen in CI, a trainer that got SIGINT there trained on until it was killed.
  armed = []

  def ctrl_c_in_a_gc_callback(phase, info):
    del info
    if phase == 'start' and armed:
      armed.clear()
      os.kill(os.getpid(), signal.SIGINT)
      for _ in range(3):  # (its handler runs at the next check, still inside this callback)
        pass

  gc.callbacks.append(ctrl_c_in_a_gc_callback)
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    armed.append(1)
    gc.collect()  # the premise: nothing reaches the caller
    real_train = trainer.CompiledSteps.train
    calls = []

    def train_then_collect(self, *args):
      out = real_train(self, *args)
      calls.append(1)
      if len(calls) == 3:
        armed.append(1)
        gc.collect()
      return out

    monkeypatch.setattr(trainer.CompiledSteps, 'train', train_then_collect)
    with interrupts.noting_ctrl_c(), pytest.raises(KeyboardInterrupt):
      _fit(tmp_path / 'run', 10, lm_task)
  finally:
    gc.callbacks.remove(ctrl_c_in_a_gc_callback)
    signal.signal(signal.SIGINT, previous)
  assert len(calls) == 3  # stopped at the next step boundary


# --- preemption --------------------------------------------------------------------------------------

def test_sigterm_saves_that_step_once_and_the_run_resumes_bit_exactly(lm_task, tmp_path, monkeypatch):
  straight = dict(_fit(tmp_path / 'a', 6, lm_task, checkpoint_every=4)['history'])
  real_train = trainer.CompiledSteps.train
  calls = []

  def train_then_sigterm(self, *args):
    out = real_train(self, *args)
    calls.append(1)
    if len(calls) == 3:  # as a preempted VM would, between steps 3 and 4
      os.kill(os.getpid(), signal.SIGTERM)
    return out

  monkeypatch.setattr(trainer.CompiledSteps, 'train', train_then_sigterm)
  with pytest.raises(trainer.Preempted, match='preempted at step 3: checkpoint saved') as info:
    _fit(tmp_path / 'b', 6, lm_task, checkpoint_every=4)
  # Orbax saves the first step of a fresh run; then the preempted step once (no second save of 3).
  assert info.value.step == 3 and steps_on_disk(tmp_path / 'b') == [1, 3]
  assert not _open_files_under(tmp_path / 'b')  # the TensorBoard event files were closed too
  monkeypatch.setattr(trainer.CompiledSteps, 'train', real_train)
  resumed = dict(_fit(tmp_path / 'b', 6, lm_task, checkpoint_every=4)['history'])
  assert sorted(resumed) == [4, 5, 6]
  for s in (4, 5, 6):
    assert resumed[s] == straight[s], (s, resumed[s], straight[s])
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # fit put the handler back


# --- data that runs out --------------------------------------------------------------------------------

def test_data_that_runs_out_saves_the_step_reached_and_stops_there_again_on_resume(lm_task, tmp_path):
  run = tmp_path / 'run'
  with pytest.raises(trainer.DataExhausted) as info:
    _fit(run, 10**6, lm_task, num_epochs=1, checkpoint_every=10**6, log_every=50)
  reached = int(re.search(r'ran out at step (\d+):', str(info.value)).group(1)) - 1
  assert reached > 10 and str(info.value).endswith(f'step {reached} is saved in {run / "checkpoints"}')
  saved = steps_on_disk(run)
  assert saved == [1, reached]  # (Orbax saves a run's first step) the steps trained since are kept
  with pytest.raises(trainer.DataExhausted, match=f'ran out at step {reached + 1}:'):
    _fit(run, 10**6, lm_task, num_epochs=1, checkpoint_every=10**6, log_every=50)
  assert steps_on_disk(run) == saved


# --- divergence --------------------------------------------------------------------------------------

def test_divergence_stops_at_the_exact_step_and_no_checkpoint_holds_nan(lm_task, tmp_path):
  # The case: checkpoint_every=2 is not a multiple of log_every=10.
  with pytest.raises(trainer.Diverged) as info:
    _fit(tmp_path / 'run', 10, lm_task, lr=1e6, log_every=10, checkpoint_every=2, keep_checkpoints=1)
  msg = str(info.value)
  first = int(msg.split('non-finite loss or gradient at step ')[1].split()[0])
  on_disk = steps_on_disk(tmp_path / 'run')
  assert on_disk and max(on_disk) < first, (on_disk, msg)
  assert f'last good checkpoint: step {max(on_disk)}' in msg
  assert '--restore_step=S --gin.TrainerConfig.skip_data="(S, 200)"' in msg
  for s, state in _restore_all(tmp_path / 'run').items():
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state['params'])), s


def test_skip_data_drops_the_batches_after_its_step_once(lm_task, tmp_path):
  # PaLM's loss-spike remedy: resume before the spike and skip the batches around it. Learning rate
  # 0: each step's loss depends on its batch alone, so the losses say which batches were read.
  straight = dict(_fit(tmp_path / 'straight', 8, lm_task, lr=0.0)['history'])
  run = tmp_path / 'run'
  _fit(run, 2, lm_task, lr=0.0)
  said = []
  resumed = dict(_fit(run, 4, lm_task, lr=0.0, skip_data=(2, 2), log=said.append)['history'])
  assert resumed == {3: straight[5], 4: straight[6]}
  assert 'data: skipped the 2 batches after step 2 (TrainerConfig.skip_data)' in said
  # Restarted later with the setting still in the command: from step 4 it skips nothing.
  said.clear()
  again = dict(_fit(run, 6, lm_task, lr=0.0, skip_data=(2, 2), log=said.append)['history'])
  assert again == {5: straight[7], 6: straight[8]}
  assert 'note: TrainerConfig.skip_data=(2, 2) not applied: the run starts from step 4, not 2' in said
  with pytest.raises(ValueError, match=r'TrainerConfig.skip_data=\(2, 0\) must be None or \(step, '):
    trainer.TrainerConfig(skip_data=(2, 0))


def test_skip_policy_trains_on_counts_skipped_steps_and_saves_only_finite_state(lm_task, tmp_path):
  out = _fit(tmp_path / 'run', 6, lm_task, lr=1e6, nonfinite_policy='skip', checkpoint_every=3)
  assert 0 < out['nonfinite_skipped'] <= 6 and np.isfinite(out['loss'])
  assert steps_on_disk(tmp_path / 'run') == [1, 3, 6]
  for s, state in _restore_all(tmp_path / 'run').items():
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state)), s


def test_skipped_steps_are_counted_over_the_whole_run_across_a_resume(lm_task, tmp_path):
  kw = dict(lr=1e6, nonfinite_policy='skip', checkpoint_every=3)
  straight = _fit(tmp_path / 'run', 6, lm_task, **kw)
  ck = checkpointing.Checkpointer(str(tmp_path / 'run'), save_every=3)
  at_3 = ck.counters(3)['nonfinite_steps']
  ck.close()
  assert 0 < at_3 <= straight['nonfinite_skipped'] <= 6
  # Resume from step 3 (step 6 is set aside) and train 4..6 again: same total, not the 4..6 part.
  resumed = _fit(tmp_path / 'run', 6, lm_task, restore_step=3, **kw)
  assert resumed['nonfinite_skipped'] == straight['nonfinite_skipped']
  assert resumed['loss'] == straight['loss']


def test_skip_policy_leaves_params_unchanged_on_a_nonfinite_step_and_counts_it(lm_task):
  model = build_model(MODEL)
  opt = optimizers.OptimizerConfig(learning_rate=1e-2, warmup_steps=0)
  tx, sched = optimizers.make_optimizer(opt, 10), optimizers.make_schedule(opt, 10)
  ds = data.get_dataset(data.DataConfig(lm_task, {'targets': 32}, batch_size=8), 'decoder')
  batch = {k: jnp.asarray(v) for k, v in next(iter(ds)).items()}
  abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
  state = partitioning.unbox(trainer.init_fn(model, tx, abstract, jax.random.key(0)))
  step = jax.jit(lambda s, b, g: trainer.guarded_train_step(
      s, b, jax.random.key(1), g, skip_nonfinite=True, model=model, tx=tx, schedule=sched,
      loss_cfg=losses.LossConfig()))
  bad = {**batch, 'decoder_loss_weights': batch['decoder_loss_weights'] * jnp.nan}
  after_bad, m, guard = step(state, bad, trainer.new_guard())
  assert float(m['nonfinite']) == 1.0 and int(after_bad['step']) == 1
  assert int(guard['first_nonfinite']) == 1 and int(guard['nonfinite_steps']) == 1
  for a, b in zip(jax.tree.leaves(state['params']), jax.tree.leaves(after_bad['params'])):
    np.testing.assert_array_equal(a, b)
  after_good, m, guard = step(after_bad, batch, guard)
  assert float(m['nonfinite']) == 0.0 and int(guard['nonfinite_steps']) == 1
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after_bad['params']),
                                                      jax.tree.leaves(after_good['params'])))


# --- run-dir identity --------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def other_text_task(shared_data, small_text, tmp_path_factory):
  """Same files as lm_task, but a vocabulary of the same size trained on German captions."""
  from tasks import lm
  d = tmp_path_factory.mktemp('de')
  de = d / 'de.txt'
  lines = (shared_data / 'parallel' / 'multi30k' / 'train.de').read_text('utf-8').splitlines()
  de.write_text('\n'.join(lines[:4000]) + '\n', encoding='utf-8')
  vocab = vocab_lib.sentencepiece_vocabulary(train_files=[str(de)], vocab_size=500,
                                             cache_dir=str(d / 'spm'))
  return lm.text_lm_task(name='test_small_lm_other_vocab', train_files=[small_text['train']],
                         vocabulary=vocab)


def test_same_size_vocabulary_with_other_content_is_refused_before_restoring(
    lm_task, other_text_task, tmp_path):
  _fit(tmp_path / 'run', 2, lm_task)
  spm = tmp_path / 'run' / 'vocabulary' / 'spm.model'
  saved = spm.read_bytes()
  with pytest.raises(run_dir.RunDirMismatch,
                     match=r'vocabulary content differs from .*spm.model: sha256 \w+ \(run\) vs '
                     r'\w+ \(.*\), same size 500'):
    _fit(tmp_path / 'run', 4, other_text_task)
  assert spm.read_bytes() == saved and steps_on_disk(tmp_path / 'run') == [1, 2]


def test_other_model_family_is_named_as_such(tmp_path):
  run_dir.save_model_config(str(tmp_path), MODEL)
  encdec = EncDecConfig(vocab_size=500, embed_dim=32, num_encoder_layers=1, num_decoder_layers=1,
                        num_heads=4, head_dim=8, mlp_dim=64, dtype='float32')
  with pytest.raises(run_dir.RunDirMismatch, match=r"is a 'decoder' model, this config builds an? "
                     r"'encdec' model \(model family differs\)"):
    run_dir.check_model_config(str(tmp_path), encdec, 'resuming')
  notes = []  # a field that changes no shape is a note, not an error
  run_dir.check_model_config(str(tmp_path), DecoderConfig(**{**MODEL.__dict__, 'dtype': 'bfloat16'}),
                             'resuming', log=notes.append)
  assert notes and "dtype: 'float32' (run) vs 'bfloat16'" in notes[0]


def test_a_run_resumed_with_another_rope_theta_is_evaluated_and_exported_per_segment(
    lm_task, small_text, tmp_path, capsys):
  # Continued pretraining to a longer context resumes with a larger rope_theta (a field that changes
  # no shape: a note, not an error). model.json kept the first segment's value for every step, so
  # the export and the evaluation of the new checkpoints rotated with the wrong theta, silently.
  from t5x_like import eval as eval_lib
  from t5x_like.convert import to_hf
  run = tmp_path / 'run'
  other = DecoderConfig(**{**MODEL.__dict__, 'rope_theta': 100.0})
  _fit(run, 2, lm_task)
  _fit(run, 4, lm_task, model=other)
  assert run_dir.load_model_config(str(run), 2) == MODEL
  assert run_dir.load_model_config(str(run), 4) == other == run_dir.load_model_config(str(run))
  before = (run / 'model.json').read_text()
  _fit(run, 6, lm_task, model=other)  # resumed again with the same config: nothing to record
  assert (run / 'model.json').read_text() == before
  assert [e['through_step'] for e in json.loads(before)['earlier']] == [2]

  for step, theta in ((2, 10000.0), (4, 100.0)):
    to_hf.export(str(run), str(tmp_path / f'hf{step}'), step=step, log=lambda *a: None)
    hf = json.loads((tmp_path / f'hf{step}' / 'config.json').read_text())
    assert hf.get('rope_parameters', hf).get('rope_theta') == theta, hf

  # Step 4 evaluated with its own config: as a run dir that knows only that config evaluates it.
  argv = ['--metrics', 'ppl', '--eval_files', small_text['validation'], '--window_mode', 'packed',
          '--max_windows', '8']
  alone = tmp_path / 'alone'
  shutil.copytree(run, alone)
  run_dir.save_model_config(str(alone), other)
  assert eval_lib.main(['--model_dir', str(alone), '--step', '4'] + argv) == 0
  assert eval_lib.main(['--model_dir', str(run), '--all_steps'] + argv) == 0
  capsys.readouterr()
  ppl = {d.name: json.loads((d / 'results.json').read_text())['perplexity']
         for d in (run / 'eval').iterdir() if (d / 'results.json').exists()}
  want = json.loads((alone / 'eval' / '4' / 'results.json').read_text())['perplexity']
  assert ppl['4'] == want
  assert ppl['2'] != ppl['4']


def test_a_resume_with_another_batch_size_is_refused_before_compiling_or_restarts_the_data(
    lm_task, tmp_path, monkeypatch):
  # The tf.data iterator's position read back into a pipeline with another batch without complaint;
  # the first batch then failed in TensorFlow ("Incompatible shapes"), a traceback after the compile.
  run = tmp_path / 'run'
  _fit(run, 2, lm_task)
  ckdir = run / 'checkpoints'
  before = sorted((str(p.relative_to(ckdir)), p.stat().st_mtime_ns) for p in ckdir.rglob('*'))
  with monkeypatch.context() as m:
    m.setattr(trainer.CompiledSteps, '__init__', lambda *a, **k: pytest.fail('compiled'))
    with pytest.raises(checkpointing.CheckpointMismatch,
                       match=r"checkpoint at step 2 in .* does not match this run: its data position "
                             r"\(a tf.data iterator\) was saved for per-host batches of decoder_\w+ "
                             r"\(8, 32\) int32, this run's are \(16, 32\) int32: it cannot be carried "
                             r"over to another batch size or feature lengths; resume with the data "
                             r"settings it was saved with, or set TrainerConfig.restore_data=False"):
      _fit(run, 4, lm_task, batch_size=16)
  assert sorted((str(p.relative_to(ckdir)), p.stat().st_mtime_ns) for p in ckdir.rglob('*')) == before

  # As T5X's restore_dataset=False: the model and optimizer from step 2, the data from its start.
  out = _fit(run, 4, lm_task, batch_size=16, restore_data=False)
  assert [s for s, _ in out['history']] == [3, 4]
  shapes = json.loads((ckdir / '4' / 'data' / 'host_0_of_1' / 'batch_shapes.json').read_text())
  assert {tuple(v[0]) for v in shapes.values()} == {(16, 32)}


def test_a_resume_that_changes_the_learning_rate_of_the_next_step_says_so(lm_task, tmp_path):
  # A resume with another TRAIN_STEPS (the decay follows it), rate or warmup bends the schedule at
  # the resumed step, silently; the run now says which rate it had and which it gets.
  run = tmp_path / 'run'
  _fit(run, 2, lm_task)
  said = []
  _fit(run, 4, lm_task, log=said.append)  # the same schedule: nothing to say
  assert not [line for line in said if 'learning rate' in line], said
  _fit(run, 6, lm_task, lr=1e-3, log=said.append)
  notes = [line for line in said if line.startswith('note: step 5 trains with learning rate')]
  assert notes and 'the run was going on with 0.002' in notes[0], said


def test_init_params_from_takes_the_params_not_the_optimizer_and_refuses_another_model_or_vocab(
    four_steps, lm_task, other_text_task, tmp_path):
  src, _ = four_steps
  # Learning rate 0: the new run's first checkpoint holds exactly the parameters it started from.
  _fit(tmp_path / 'new', 1, lm_task, lr=0.0, init_params_from=src)
  start, = _restore_all(tmp_path / 'new').values()
  last = _restore_all(src)[4]
  assert int(start['step']) == 1  # a new run: its own step count and a fresh optimizer
  for a, b in zip(jax.tree.leaves(last['params']), jax.tree.leaves(start['params'])):
    np.testing.assert_array_equal(a, b)
  adam_counts = [int(x) for p, x in jax.tree_util.tree_leaves_with_path(start['opt_state'])
                 if 'count' in jax.tree_util.keystr(p)]
  assert adam_counts and set(adam_counts) == {1}
  wider = DecoderConfig(**{**MODEL.__dict__, 'mlp_dim': 128})
  with pytest.raises(run_dir.RunDirMismatch,
                     match=r"train.init_params_from='.*': .*model.json has other parameter shapes "
                     r"than this config: mlp_dim: 64 \(run\) vs 128 \(this config\)"):
    _fit(tmp_path / 'wider', 1, lm_task, model=wider, init_params_from=src)
  with pytest.raises(run_dir.RunDirMismatch,
                     match=r"train.init_params_from='.*': vocabulary content differs"):
    _fit(tmp_path / 'other_vocab', 1, other_text_task, init_params_from=src)
  for refused in ('wider', 'other_vocab'):  # refused before anything was saved
    assert not (tmp_path / refused / 'checkpoints').exists() or not steps_on_disk(
        tmp_path / refused)
  assert steps_on_disk(src) == [1, 2, 4]


# --- damaged checkpoints -----------------------------------------------------------------------------

@pytest.fixture(scope='module')
def four_steps(lm_task, tmp_path_factory):
  """A run with checkpoints at steps 1, 2 and 4, and its losses."""
  d = tmp_path_factory.mktemp('four') / 'run'
  hist = dict(_fit(d, 4, lm_task)['history'])
  return d, hist


def _truncate_arrays(step_dir):
  for f in (step_dir / 'state').rglob('*'):
    if f.is_file() and f.parent.name == 'd':
      with open(f, 'r+b') as fh:
        fh.truncate(8)


def _truncate_iterator(step_dir):
  for f in (step_dir / 'data').rglob('iterator.data*'):
    with open(f, 'r+b') as fh:
      fh.truncate(16)


DAMAGE = {
    'truncated array files': (_truncate_arrays, r'state'),
    'deleted _METADATA': (lambda d: os.remove(d / 'state' / '_METADATA'), r'state'),
    'truncated iterator file': (_truncate_iterator, r'data'),
}


@pytest.mark.parametrize('damage', list(DAMAGE))
def test_damaged_checkpoint_is_reported_as_damaged_with_step_file_and_way_out(damage, four_steps,
                                                                             lm_task, tmp_path):
  src, _ = four_steps
  run = tmp_path / 'run'
  shutil.copytree(src, run)
  fn, where = DAMAGE[damage]
  fn(run / 'checkpoints' / '4')
  with pytest.raises(checkpointing.CheckpointDamaged) as info:
    _fit(run, 6, lm_task)
  msg = str(info.value)
  assert f'checkpoint at step 4 in {run / "checkpoints"} is damaged: ' in msg, msg
  assert f'{run / "checkpoints" / "4" / where}' in msg, msg
  assert 'does not match' not in msg and '--restore_step=2' in msg, msg
  assert steps_on_disk(run) == [1, 2, 4]  # nothing deleted


def test_export_and_eval_of_a_damaged_step_name_it_in_one_line_and_leave_the_output_alone(
    four_steps, small_text, tmp_path, capsys, monkeypatch):
  from t5x_like import eval as eval_cli
  from t5x_like.convert.__main__ import main as convert_main
  src, _ = four_steps
  run, out = tmp_path / 'run', tmp_path / 'hf'
  shutil.copytree(src, run)
  assert convert_main(['to-hf', '--model_dir', str(run), '--out', str(out), '--step', '2']) == 0
  exported = {p.name: p.read_bytes() for p in out.iterdir()}
  assert 'model.safetensors' in exported and 'config.json' in exported
  _truncate_arrays(run / 'checkpoints' / '4')
  capsys.readouterr()
  seen = _record_what_a_failed_restore_leaves(monkeypatch, tmp_path)
  assert convert_main(['to-hf', '--model_dir', str(run), '--out', str(out)]) == 2
  # (With its text: eval reads and checks the text before any checkpoint.)
  assert eval_cli.main(['--model_dir', str(run), '--metrics', 'ppl', '--eval_files',
                        small_text['validation'], '--max_windows', '8']) == 2
  _let_failed_reads_finish()
  assert not seen, seen
  export_err, eval_err = capsys.readouterr().err.strip().splitlines()
  damaged = f'error: checkpoint at step 4 in {run / "checkpoints"} is damaged: {run / "checkpoints/4/state"}'
  assert export_err.startswith(damaged), export_err
  assert eval_err.startswith(damaged) and eval_err.endswith('evaluate another step with --step '
                                                            '(there: [1, 2])'), eval_err
  # The export of step 2 is still there, whole; nothing half-written beside it.
  assert {p.name: p.read_bytes() for p in out.iterdir()} == exported
  assert sorted(p.name for p in tmp_path.iterdir()) == ['hf', 'run']
  assert steps_on_disk(run) == [1, 2, 4]
  # Every step of the run: the damaged one is named and passed over, the others are evaluated.
  assert eval_cli.main(['--model_dir', str(run), '--all_steps', '--metrics', 'ppl', '--eval_files',
                        small_text['validation'], '--max_windows', '8']) == 2
  captured = capsys.readouterr()
  err = captured.err.strip().splitlines()
  assert err[0].startswith(damaged) and err[0].endswith('; going on with the other steps'), err
  assert err[1] == 'error: 1 of 3 steps not evaluated, their checkpoints could not be read (above): [4]'
  assert [l.split(':')[0] for l in captured.out.splitlines()] == ['step 1', 'step 2']
  assert sorted(eval_cli.read_results(str(run))) == [1, 2]


def _let_failed_reads_finish():
  """The reads still in flight when Orbax's event loop closed finish, and their tasks are collected."""
  time.sleep(1)
  gc.collect()


def _record_what_a_failed_restore_leaves(monkeypatch, tmp_path) -> list:
  """From here on, the unraisable errors and asyncio's log records that reach the user, as strings.
  (The hooks start afresh: the quieting installed by an earlier test of this process is gone.
  What the failed restores of earlier tests left is reported first, under that quieting, and a
  read of theirs collected later still, which names their folder, is not counted here.)"""
  _let_failed_reads_finish()
  seen = []
  tests_root = str(tmp_path.parent.parent)  # (a folder above every test's tmp_path)

  def keep(text):
    if tests_root not in text or str(tmp_path) in text:
      seen.append(text)

  monkeypatch.setattr(sys, 'unraisablehook', lambda u: keep(f'unraisable: {u.exc_value!r}'))
  asyncio_log = logging.getLogger('asyncio')
  monkeypatch.setattr(asyncio_log, 'filters', [])
  monkeypatch.setattr(asyncio_log, 'handle', lambda record: asyncio_log.filter(record) and
                      keep(f'asyncio: {record.getMessage()}'))
  return seen


def test_reads_finishing_after_a_failed_restore_print_nothing_else_still_does(four_steps, lm_task,
                                                                             tmp_path, monkeypatch):
  src, _ = four_steps
  run = tmp_path / 'run'
  shutil.copytree(src, run)
  _truncate_arrays(run / 'checkpoints' / '4')
  seen = _record_what_a_failed_restore_leaves(monkeypatch, tmp_path)
  with pytest.raises(checkpointing.CheckpointDamaged):
    _fit(run, 6, lm_task)
  _let_failed_reads_finish()
  assert not seen, seen
  other = types.SimpleNamespace(exc_type=RuntimeError, exc_value=RuntimeError('something else'),
                                exc_traceback=None, err_msg=None, object=None)
  sys.unraisablehook(other)
  assert seen == ["unraisable: RuntimeError('something else')"]
  # One of Orbax's reads, left half-way and closed as it is collected: dropped; a coroutine of
  # another package, or of Orbax but not a read, is not.
  orbax_file = '/x/orbax/checkpoint/_src/serialization/serialization.py'
  for filename, name, kept in ((orbax_file, '_read_a', False), (orbax_file, 'save', True),
                               ('/x/other/reader.py', '_read_a', True)):
    namespace = {}
    exec(compile(f'async def {name}(): pass', filename, 'exec'), namespace)  # pylint: disable=exec-used
    coroutine = namespace[name]()
    sys.unraisablehook(types.SimpleNamespace(exc_type=Exception, exc_value=Exception('read'),
                                             exc_traceback=None, err_msg=None, object=coroutine))
    coroutine.close()
    assert (seen[-1] == "unraisable: Exception('read')") == kept, (filename, name)
    del seen[1:]
  asyncio_log = logging.getLogger('asyncio')
  # asyncio's report of a failed read is dropped; its other reports are not.
  for error, kept in ((ValueError('OUT_OF_RANGE: Error reading "x/.zarray" in OCDBT database'), False),
                      (ValueError('some other failure'), True), (None, True)):
    for what in ('Task', 'Future'):
      record = asyncio_log.makeRecord('asyncio', logging.ERROR, __file__, 1,
                                      f'{what} exception was never retrieved\nfuture: <{what} ...>',
                                      (), (type(error), error, None) if error else None)
      assert bool(asyncio_log.filter(record)) == kept, (what, error)


def test_fallback_and_restore_step_resume_exactly_and_set_newer_steps_aside(four_steps, lm_task,
                                                                           tmp_path):
  src, hist = four_steps
  for how in ({'restore_fallback': True}, {'restore_step': 2}):
    run = tmp_path / str(len(how)) / next(iter(how))
    shutil.copytree(src, run)
    if 'restore_fallback' in how:
      _truncate_arrays(run / 'checkpoints' / '4')
    # A folder left by a save that was killed before its commit: never restored, never in the way.
    (run / 'checkpoints' / '6.orbax-checkpoint-tmp-1700000000').mkdir()
    resumed = dict(_fit(run, 6, lm_task, **how)['history'])
    assert sorted(resumed) == [3, 4, 5, 6]
    assert resumed[3] == hist[3] and resumed[4] == hist[4]  # from step 2's state, exactly as before
    assert steps_on_disk(run) == [2, 4, 6]
    aside = list((run / 'set_aside_checkpoints').glob('*/4'))
    assert len(aside) == 1 and (aside[0] / 'state').is_dir()
    assert not list((run / 'checkpoints').glob('*tmp*'))


def _rewrite_with_one_bit_flipped(run, step):
  """Saves `step`'s state again through Orbax with one bit of one parameter flipped, keeping the
  checksums saved with the original: the checkpoint reads back without any error, as it would after
  bits changed in storage or in host memory before the write. Returns that parameter's path."""
  state = _restore_all(run)[step]
  path, leaf = jax.tree_util.tree_flatten_with_path(state['params'])[0][0]
  host = np.array(leaf)
  host.view(np.uint32).reshape(-1)[5] ^= np.uint32(1 << 20)
  state['params'] = jax.tree_util.tree_map_with_path(
      lambda p, x: jax.device_put(host, x.sharding) if p == path else x, state['params'])
  tmp = run / 'rewritten'
  with ocp.StandardCheckpointer() as c:
    c.save(tmp, state)
    c.wait_until_finished()
  shutil.rmtree(run / 'checkpoints' / str(step) / 'state')
  shutil.move(tmp, run / 'checkpoints' / str(step) / 'state')
  return 'params/' + '/'.join(k.key for k in path)


def test_changed_bits_that_read_back_cleanly_are_caught_by_the_checksums(four_steps, lm_task,
                                                                         tmp_path, capsys):
  src, hist = four_steps
  run = tmp_path / 'run'
  shutil.copytree(src, run)
  name = _rewrite_with_one_bit_flipped(run, 4)
  with pytest.raises(checkpointing.CheckpointDamaged) as info:
    _fit(run, 6, lm_task)
  msg = str(info.value)
  assert msg.startswith(f'checkpoint at step 4 in {run / "checkpoints"} is damaged: {name} '
                        '(float32) reads back with checksum '), msg
  assert 'its bits changed after it was saved; resume from an earlier step with --restore_step=2' \
      in msg, msg
  assert steps_on_disk(run) == [1, 2, 4]
  # Evaluation reads the parameters through restore_params, the HF export one at a time (host
  # checksums): checked there too.
  abstract = _restore_all(src)[4]['params']
  with pytest.raises(checkpointing.CheckpointDamaged, match=re.escape(name)):
    checkpointing.restore_params(str(run), abstract)
  params, step = checkpointing.restore_params(str(run), abstract, step=2)
  assert step == 2 and jax.tree.structure(params) == jax.tree.structure(abstract)
  with pytest.raises(FileNotFoundError, match=re.escape(
      f'no checkpoint at step 3 in {run / "checkpoints"} (steps: [1, 2, 4])')):
    checkpointing.restore_params(str(run), abstract, step=3)
  from t5x_like.convert.__main__ import main as convert_main
  capsys.readouterr()
  assert convert_main(['to-hf', '--model_dir', str(run), '--out', str(tmp_path / 'hf')]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith(f'error: checkpoint at step 4 in {run / "checkpoints"} is damaged: {name} '
                        '(float32) reads back with checksum ') and '\n' not in err, err
  assert not (tmp_path / 'hf').exists()
  assert convert_main(['to-hf', '--model_dir', str(run), '--out', str(tmp_path / 'hf'), '--step',
                       '2']) == 0
  # With restore_fallback the run goes on from step 2, exactly as the first time.
  resumed = dict(_fit(run, 6, lm_task, restore_fallback=True)['history'])
  assert resumed[3] == hist[3] and resumed[4] == hist[4]
  assert len(list((run / 'set_aside_checkpoints').glob('*/4'))) == 1


def test_evaluating_a_run_whose_trainer_removes_the_step_being_read(four_steps, small_text, tmp_path,
                                                                    monkeypatch, capsys):
  # A trainer still running removes its older steps as it saves (keep_checkpoints). Evaluation that
  # followed it found the step it was reading removed half-way: a traceback, or "damaged".
  from t5x_like import eval as eval_lib
  src, _ = four_steps
  run = tmp_path / 'run'
  shutil.copytree(src, run)
  ckpts = run / 'checkpoints'
  real_restore = ocp.CheckpointManager.restore

  def the_trainer_saves_5_and_removes_4(self, step, *a, **k):
    if step == 4 and (ckpts / '4').exists():
      shutil.copytree(ckpts / '4', ckpts / '5')
      shutil.rmtree(ckpts / '4')
    return real_restore(self, step, *a, **k)

  monkeypatch.setattr(ocp.CheckpointManager, 'restore', the_trainer_saves_5_and_removes_4)
  argv = ['--model_dir', str(run), '--metrics', 'ppl', '--eval_files', small_text['validation'],
          '--window_mode', 'packed', '--max_windows', '16']
  capsys.readouterr()
  assert eval_lib.main(argv) == 0  # the latest (4), then the new latest
  assert capsys.readouterr().out.startswith('step 5: ppl ')
  shutil.rmtree(ckpts / '5')
  shutil.copytree(src / 'checkpoints' / '4', ckpts / '4')
  assert eval_lib.main(argv + ['--step', '4']) == 2  # asked for by name: said in one line
  err = capsys.readouterr().err.strip()
  assert err == (f'error: checkpoint step 4 in {ckpts} was removed while it was being read (a '
                 'trainer still running on it keeps only its last TrainerConfig.keep_checkpoints)'), err
  shutil.rmtree(ckpts / '5')
  shutil.copytree(src / 'checkpoints' / '4', ckpts / '4')
  assert eval_lib.main(argv + ['--all_steps']) == 0  # the others are evaluated
  out, err = capsys.readouterr()
  assert [line.split(':')[0] for line in out.splitlines()] == ['step 1', 'step 2']
  assert err.startswith('step 4: not evaluated: checkpoint step 4 in '), err


def test_evaluating_every_step_reads_each_text_once(four_steps, small_text, tmp_path, monkeypatch,
                                                    capsys):
  # The MEXA texts were read before the first checkpoint (to check them) and again for every step,
  # twice with --init_control; the BLEU files likewise. Each is now read once, for every step.
  from t5x_like import eval as eval_lib
  from t5x_like.evaluation import text_sources
  lines = open(small_text['validation']).read().splitlines()
  texts = {}
  for name, part in (('pivot', lines[:8]), ('target', lines[8:16]), ('src', lines[16:20]),
                     ('ref', lines[20:24])):
    texts[name] = tmp_path / f'{name}.txt'
    texts[name].write_text('\n'.join(part) + '\n')
  real_read_lines = text_sources.read_lines
  reads = []
  def read_lines(source, *a, **k):
    reads.append(source)
    return real_read_lines(source, *a, **k)
  monkeypatch.setattr(text_sources, 'read_lines', read_lines)
  run = tmp_path / 'run'
  shutil.copytree(four_steps[0], run)  # (the eval's results must not reach the other tests' copies)
  argv = ['--model_dir', str(run), '--all_steps', '--metrics', 'ppl,mexa,bleu',
          '--init_control', '--eval_files', small_text['validation'], '--window_mode', 'packed',
          '--max_windows', '16', '--mexa_pivot', str(texts['pivot']), '--mexa_target',
          str(texts['target']), '--src_file', str(texts['src']), '--ref_file', str(texts['ref']),
          '--max_decode_length', '2', '--batch_size', '4']
  assert eval_lib.main(argv) == 0
  assert [l.split(':')[0] for l in capsys.readouterr().out.splitlines()] == ['step 1', 'step 2',
                                                                            'step 4']
  assert sorted(reads) == sorted([small_text['validation'], *map(str, texts.values())])


def test_a_checkpoint_saved_without_checksums_still_resumes(four_steps, lm_task, tmp_path):
  src, hist = four_steps
  run = tmp_path / 'run'
  shutil.copytree(src, run)
  assert (run / 'checkpoints' / '4' / 'checksums').is_dir()
  for s in steps_on_disk(run):
    shutil.rmtree(run / 'checkpoints' / str(s) / 'checksums')
  resumed = dict(_fit(run, 6, lm_task)['history'])
  assert sorted(resumed) == [5, 6]
  assert (run / 'checkpoints' / '6' / 'checksums').is_dir()


def test_restore_step_that_does_not_exist_names_the_steps_there(four_steps, lm_task, tmp_path):
  src, _ = four_steps
  shutil.copytree(src, tmp_path / 'run')
  with pytest.raises(ValueError, match=r'TrainerConfig.restore_step=3: no checkpoint of that step '
                     r'in .* \(found \[1, 2, 4\]\)'):
    _fit(tmp_path / 'run', 6, lm_task, restore_step=3)


# --- bad input ---------------------------------------------------------------------------------------

@pytest.mark.parametrize('content, expected', [
    (b'', r'{path}: empty file'),
    (b'\n   \n\n', r'{path}: no usable examples: every line is blank'),
    ('A man rides a horse.\nZwei Männer\n'.encode('latin-1'), r'{path}:2: invalid UTF-8'),
])
def test_bad_text_files_are_one_line_naming_file_and_line(content, expected, tmp_path):
  path = tmp_path / 'train.txt'
  path.write_bytes(content)
  pattern = expected.format(path=path)
  with pytest.raises(sources.InputError, match=pattern):
    sources.text_line_source({'train': [str(path)]}, 'TRAIN_FILES')
  with pytest.raises(sources.InputError, match=pattern):  # vocabulary training reads the same files
    vocab_lib.sentencepiece_vocabulary(train_files=[str(path)], vocab_size=100,
                                       cache_dir=str(tmp_path / 'spm'))


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_entry_point_refuses_an_empty_training_file_before_compiling(tmp_path, small_vocab, clean_gin,
                                                                    capsys):
  empty = tmp_path / 'empty.txt'
  empty.write_text('')
  code = train.main(['--gin_file=gin_configs/examples/tiny_decoder_pretrain.gin',
                     f"--gin.MODEL_DIR='{tmp_path / 'run'}'", '--gin.TRAIN_STEPS=5',
                     f"--gin.TRAIN_FILES=['{empty}']"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == exit_codes.CONFIG_ERROR and err[-1].startswith(f'error: {empty}: empty file ('), err
  assert not (tmp_path / 'run' / 'checkpoints').exists()


@pytest.mark.parametrize('binding,expected', [
    ('checkpoint_every=0', 'TrainerConfig.checkpoint_every=0 must be >= 1 (a number of steps)'),
    ('log_every=-1', 'TrainerConfig.log_every=-1 must be >= 1 (a number of steps)'),
    ('eval_steps=0', 'TrainerConfig.eval_steps=0 must be >= 1 batches, or -1 for the whole split'),
    ('num_microbatches=3', 'TrainerConfig.num_microbatches=3 does not divide the train batch of 16'),
    ('keep_checkpoints=0',
     'TrainerConfig.keep_checkpoints=0 must be >= 1, or None to keep every checkpoint'),
])
def test_entry_point_refuses_a_trainer_setting_that_cannot_work_before_compiling(
    binding, expected, tmp_path, small_vocab, clean_gin, capsys, monkeypatch):
  # A zero period was a ZeroDivisionError traceback at the first step, eval_steps=0 a traceback once
  # the whole run had trained, num_microbatches a reshape error from inside the traced step.
  compiled = []
  monkeypatch.setattr(trainer.CompiledSteps, '__init__', lambda *a, **k: compiled.append(1))
  code = train.main(['--gin_file=gin_configs/examples/tiny_decoder_pretrain.gin',
                     f"--gin.MODEL_DIR='{tmp_path / 'run'}'", '--gin.TRAIN_STEPS=5',
                     f'--gin.TrainerConfig.{binding}'])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == exit_codes.CONFIG_ERROR and err == [f'error: {expected}'], err
  assert not compiled and not (tmp_path / 'run' / 'checkpoints').exists()
