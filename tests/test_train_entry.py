"""The real entry point, `python -m t5x_like.train`, end to end on both tiny configs, resume included,
and each set-up error reported in one line before anything compiles."""
import os
import pathlib
import re
import subprocess
import sys

import gin
import pytest

from t5x_like import exit_codes, provenance, train

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(*args, timeout=600):
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  return subprocess.run([sys.executable, '-m', 't5x_like.train', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize('config', ['tiny_decoder_pretrain', 'tiny_encdec_pretrain'])
def test_tiny_config_trains_writes_run_files_and_resumes(config, tmp_path):
  model_dir = tmp_path / 'run'
  gin_file = f'--gin_file=gin_configs/examples/{config}.gin'
  first = _run(gin_file, f"--gin.MODEL_DIR='{model_dir}'", '--gin.TRAIN_STEPS=20',
               '--gin.TrainerConfig.checkpoint_every=10')
  assert first.returncode == 0, first.stderr[-3000:]
  assert 'step 20/20' in first.stdout and 'eval ' in first.stdout
  # The save at step 10 (asynchronous) is reported in the window that follows it.
  assert re.search(r'step 20/20 .* \| checkpoint blocked \d+\.\d{3} s$', first.stdout, re.M), first.stdout
  assert list((model_dir / 'train').glob('events.out.tfevents.*'))
  assert (model_dir / 'checkpoints' / '20' / 'state').is_dir()
  assert (model_dir / 'checkpoints' / '20' / 'data').is_dir()
  config_gin = (model_dir / 'config.gin').read_text()
  assert 'TRAIN_STEPS = 20' in config_gin
  assert config_gin.startswith(f'# source commit: {provenance.source_commit()}; jax ')
  assert (model_dir / 'vocabulary' / 'spm.model').exists()

  second = _run(gin_file, f"--gin.MODEL_DIR='{model_dir}'", '--gin.TRAIN_STEPS=30',
                '--gin.TrainerConfig.checkpoint_every=10')
  assert second.returncode == 0, second.stderr[-3000:]
  assert 'Resuming from checkpoint at step 20' in second.stdout
  assert 'step 21' not in first.stdout and 'step 30/30' in second.stdout
  assert 'step 10/30' not in second.stdout  # continued, not restarted
  assert (model_dir / 'checkpoints' / '30').is_dir()
  # The first run's operative config is kept; the resumed one is written beside it.
  assert (model_dir / 'config_resumed_at_20.gin').exists()
  assert 'TRAIN_STEPS = 20' in (model_dir / 'config.gin').read_text()


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


DEC = 'gin_configs/examples/tiny_decoder_pretrain.gin'


# A complete command line: each case below adds one bad setting to it.
RUN = [f'--gin_file={DEC}', '--gin.TRAIN_STEPS=5', "--gin.MODEL_DIR='/tmp/never'"]


@pytest.mark.parametrize('args, expected', [
    ([f'--gin_file={DEC}', '--gin.DecoderConfig.num_layer=3'],
     "Configurable 'DecoderConfig' doesn't have a parameter named 'num_layer'"),
    ([f'--gin_file={DEC}', '--gin.DecoderConfg.num_layers=3'], "No configurable matching 'DecoderConfg'"),
    (['--gin_file=gin_configs/examples/no_such.gin'], 'gin file not found: gin_configs/examples/no_such.gin'),
    ([f'--gin_file={DEC}', '--gin.TRAIN_STEP=5'], 'gin macro TRAIN_STEP is set on the command line but no gin file uses %TRAIN_STEP'),
    ([f'--gin_file={DEC}', '--gin.TRAIN_STEPS=5'], 'MODEL_DIR'),
    ([*RUN, "--gin.TRAIN_FILES=['/no/such/corpus.txt']"], 'no file matches /no/such/corpus.txt'),
    ([*RUN, '--gin.BATCH_SIZE=12'], 'batch_size=12 does not divide over the 8 data-parallel devices'),
    ([*RUN, "--gin.OptimizerConfig.schedule='cosin'"], "OptimizerConfig.schedule='cosin'"),
    ([*RUN, '--gin.OptimizerConfig.learning_rate=-3e-4'],
     'OptimizerConfig.learning_rate=-0.0003 must be >= 0'),
    ([*RUN, '--gin.OptimizerConfig.b2=1.5'], 'OptimizerConfig.b2=1.5 must be in [0, 1)'),
    ([*RUN, "--gin.DecoderConfig.rope_scaling={'factor': 0.5}"],
     'DecoderConfig.rope_scaling: RopeScaling(factor=0.5, low_freq_factor=1.0, high_freq_factor=4.0, '
     'original_max_position_embeddings=8192) needs factor >= 1'),
    ([*RUN, '--gin.SEQUENCE_LENGTH=0'],
     "DataConfig.task_feature_lengths['targets']=0 must be an integer >= 1"),
    ([*RUN, "--gin.MODEL_DIR='/proc/never'"],
     "MODEL_DIR='/proc/never': cannot make its checkpoint folder: [Errno 2]"),
    # A string without gin's quotes (the shell took the only ones): gin's SyntaxError, in one line.
    ([f'--gin_file={DEC}', '--gin.TRAIN_STEPS=5', '--gin.MODEL_DIR=/tmp/never'],
     "gin binding 'MODEL_DIR = /tmp/never': Unable to parse value (a string needs quotes of its own "
     "inside the flag: --gin.MODEL_DIR=\"'/tmp/never'\")"),
    ([*RUN, '--gin.OptimizerConfig.schedule=cosine'],
     "gin binding 'OptimizerConfig.schedule = cosine': Unable to parse value (a string needs quotes"),
    ([*RUN, "--gin.TRAIN_FILES=['/a'"],
     "gin binding \"TRAIN_FILES = ['/a'\": a bracket or quote is not closed"),
])
def test_bad_input_is_one_line_naming_the_problem(args, expected, clean_gin, capsys):
  code = train.main(args)
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2
  last = err[-1]
  assert last.startswith('error: ') and expected in last, err
  assert not os.path.exists('/tmp/never/checkpoints')


def test_a_gin_file_that_does_not_parse_is_named_with_its_line(clean_gin, tmp_path, capsys):
  bad = tmp_path / 'bad.gin'
  bad.write_text(f"include '{DEC}'\nMODEL_DIR = /tmp/never\n")
  assert train.main([f'--gin_file={bad}', '--gin.TRAIN_STEPS=5']) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1] == f'error: gin file {bad} line 2: Unable to parse value: MODEL_DIR = /tmp/never', err


def test_divergence_is_one_line_with_its_exit_status(clean_gin, tmp_path, capsys):
  code = train.main([f'--gin_file={DEC}', f"--gin.MODEL_DIR='{tmp_path / 'run'}'", '--gin.TRAIN_STEPS=30',
                     '--gin.OptimizerConfig.learning_rate=1e6', '--gin.OptimizerConfig.warmup_steps=0',
                     '--gin.OptimizerConfig.clip_grad_norm=None', '--gin.TrainerConfig.eval_every=0'])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == exit_codes.DIVERGED, err[-5:]
  # gin adds "In call to configurable 'train'" on a line of its own to exceptions that pass it
  assert err[-1].startswith('error: non-finite loss or gradient at step ') and 'Lower the learning '\
      'rate' in err[-1] and 'In call to configurable' not in err[-1], err[-5:]


def test_data_that_runs_out_is_one_line_and_not_restartable(clean_gin, tmp_path, small_text, capsys):
  few = tmp_path / 'few.txt'
  few.write_text(''.join(open(small_text['train'], encoding='utf-8').readlines()[:60]), encoding='utf-8')
  code = train.main([f'--gin_file={DEC}', f"--gin.MODEL_DIR='{tmp_path / 'run'}'", '--gin.TRAIN_STEPS=1000',
                     f"--gin.TRAIN_FILES=['{few}']", '--gin.VOCAB_SIZE=200',
                     '--gin.train/DataConfig.num_epochs=1', '--gin.TrainerConfig.eval_every=0'])
  last = capsys.readouterr().err.strip().splitlines()[-1]
  assert code == exit_codes.CONFIG_ERROR and not exit_codes.is_restartable(code)
  assert re.fullmatch(r"error: training data tiny_text_lm ran out at step \d+: no full batch of 16 left "
                      r"\(num_epochs set, or too few examples for TRAIN_STEPS=1000\?\); step \d+ is saved "
                      rf"in {re.escape(str(tmp_path / 'run' / 'checkpoints'))}", last), last


def test_parse_gin_starts_from_an_empty_config(clean_gin):
  """In-process callers (tests, `tasks show`, launchers) must not inherit an earlier parse: a leftover
  binding such as an eval dataset once made an import -> train run evaluate a split it never had."""
  import tasks  # noqa: F401  (DEC names seqio tasks)
  gin.parse_config("TrainerConfig.num_microbatches = 4\nTrainerConfig.log_every = 7")
  train.parse_gin([DEC], ['TrainerConfig.log_every = 3'], [str(REPO)])
  assert gin.query_parameter('TrainerConfig.log_every') == 3
  with pytest.raises(ValueError):  # the leftover binding is gone, not merely overridden
    gin.query_parameter('TrainerConfig.num_microbatches')


@pytest.mark.parametrize('gin_file', sorted(str(p.relative_to(REPO)) for p in REPO.glob('gin_configs/*/*.gin')
                                            if "include '" in p.read_text()))
def test_a_gin_file_and_its_includes_parse_from_any_directory(gin_file, clean_gin, tmp_path,
                                                              monkeypatch):
  # gin looks `include 'gin_configs/...'` up in the working directory, then as a Python package
  # resource; gin_configs/ is on sys.path (the editable install), and without __init__.py files gin
  # raised TypeError on the namespace package ("expected str ... not NoneType", In file ..., line 7).
  import tasks  # noqa: F401  (the files name seqio tasks)
  monkeypatch.chdir(tmp_path)
  train.parse_gin([str(REPO / gin_file)], [], [])
  assert 'train.model_dir = %MODEL_DIR' in gin.config_str()  # from the run file it includes


ENTRY_POINTS = ['t5x_like.train', 't5x_like.eval', 't5x_like.report', 'launch', 'launch.local',
                'launch.sweep', 'launch.mini_ablation', 'launch.demo', 'launch.clone_suite',
                'launch.preflight', 'tasks']


def test_every_entry_point_writes_each_line_through_to_a_log_file(tmp_path):
  # A launcher sends the trainer's output to a file, where Python buffers stdout in blocks: a trainer
  # that died before its exit flushed them lost its last lines (seen in CI: 'interrupted after step
  # ...' missing from a sweep run's train.log, which ended in an abort message from stderr). And a
  # sweep under nohup showed none of its '[sweep] ...' progress until kilobytes of it had piled up.
  script = ('import runpy, sys\n'
            f'for module in {ENTRY_POINTS!r}:\n'
            '  sys.stdout.reconfigure(line_buffering=False)\n'
            "  sys.argv = [module, '--no_such_flag']\n"
            '  try:\n'
            "    runpy.run_module(module, run_name='__main__', alter_sys=True)\n"
            '  except SystemExit:\n'
            '    pass\n'
            "  print(module, sys.stdout.line_buffering, file=sys.stderr)\n")
  with open(tmp_path / 'out', 'w') as out:
    p = subprocess.run([sys.executable, '-c', script], cwd=REPO, stdout=out, stderr=subprocess.PIPE,
                       text=True, timeout=300)
  said = [l for l in p.stderr.splitlines() if l.split(' ')[0] in ENTRY_POINTS]
  assert said == [f'{m} True' for m in ENTRY_POINTS], p.stderr[-3000:]
