"""The launcher CLI through its dry runs: user strings survive every layer of quoting (parsed back with
shlex, syntax-checked by bash), the GKE JobSet's Job template is a valid Kubernetes Job, and restarts
follow the trainer's exit codes."""
import io
import pathlib
import shlex
import subprocess
import sys

import kubernetes
import pytest
import yaml

from launch import __main__ as cli
from launch import restarts
from launch import targets
from t5x_like import exit_codes

REPO = pathlib.Path(__file__).resolve().parents[1]
# Quotes of both kinds, spaces, an @reference, a $ and a backslash: what a gin binding may hold.
TRAIN = ['--gin_file=gin_configs/examples/tiny_decoder_pretrain.gin',
         "--gin.MODEL_DIR='gs://bucket/my run'",
         '--gin.TrainerConfig.seed=3',
         '--gin_bindings=train.optimizer = @OptimizerConfig()',
         """--gin.tasks.lm.text_lm_task.name="it's a \\"$HOME\\" task\"""",
         "--gin.VALIDATION_FILES=['a b', \"c'd\"]"]


def _dry(argv):
  out = io.StringIO()
  assert cli.main([*argv, '--dry_run', '--', *TRAIN], out=out) == 0
  return out.getvalue()


def _train_part(tokens, python):
  i = tokens.index(python)
  assert tokens[i + 1:i + 3] == ['-m', 't5x_like.train']
  j = tokens.index('--distributed', i)
  return tokens[i + 3:j]


def _bash_ok(script: str):
  res = subprocess.run(['bash', '-n'], input=script, text=True, capture_output=True)
  assert res.returncode == 0, res.stderr


@pytest.mark.parametrize('num_slices', [1, 2])
def test_tpu_commands_quote_user_strings(num_slices, tmp_path):
  out_file = tmp_path / 'cmds.sh'
  text = _dry(['tpu', '--name', 'run-1', '--tpu', 'v5p-256', '--zone', 'us-east5-a', '--project',
               'proj', '--spot', '--num_slices', str(num_slices), '--output', str(out_file)])
  assert out_file.read_text() == text
  _bash_ok(text)
  lines = [l for l in text.splitlines() if not l.startswith('#')]
  create = shlex.split(lines[0].split(' || ')[1])
  assert '--accelerator-type=v5p-256' in create and '--spot' in create
  if num_slices > 1:
    assert create[3:5] == ['queued-resources', 'create'] and '--node-count' in create
  runs = [shlex.split(l) for l in lines if '--worker=all' in l and 't5x_like.train' in l]
  assert len(runs) == num_slices
  for slice_id, argv in enumerate(runs):
    remote = [a for a in argv if a.startswith('--command=')][0][len('--command='):]
    _bash_ok(remote)
    outer = shlex.split(remote)
    job = outer[outer.index('setsid') + 3]  # setsid bash -c JOB
    _bash_ok(job)
    tokens = shlex.split(job)
    assert _train_part(tokens, '.venv/bin/python') == TRAIN
    if num_slices > 1:
      assert f'MEGASCALE_SLICE_ID={slice_id}' in tokens
  follow = shlex.split(lines[-1])
  assert '--worker=0' in follow and 'exit_code' in follow[-1]


def test_slurm_script_quotes_user_strings():
  script = _dry(['slurm', '--nodes', '2', '--gpus_per_node', '8', '--time', '24:00:00',
                 '--partition', 'gpu', '--account', 'acct', '--venv', '/opt/my venv', '--requeue',
                 '--env', 'NCCL_DEBUG=WARN', '--env', 'MSG=two words'])
  _bash_ok(script)
  for flag in ('--nodes=2', '--gpus-per-node=8', '--time=24:00:00', '--partition=gpu',
               '--account=acct', '--requeue'):
    assert f'#SBATCH {flag}' in script
  assert "export MSG='two words'" in script
  srun = shlex.split([l for l in script.splitlines() if l.strip().startswith('srun ')][0])
  assert srun[:2] == ['srun', '--kill-on-bad-exit=1']
  assert _train_part(srun, '/opt/my venv/bin/python') == TRAIN


def test_gke_jobset_is_valid_and_keeps_argv():
  text = _dry(['gke', '--name', 'run-1', '--tpu', 'v5p-256', '--num_slices', '2', '--image',
               'gcr.io/p/t5x:1', '--max_restarts', '5'])
  m = yaml.safe_load(text)
  assert m['kind'] == 'JobSet' and m['spec']['failurePolicy']['maxRestarts'] == 5
  rj = m['spec']['replicatedJobs'][0]
  assert rj['replicas'] == 2
  template = rj['template']
  # The embedded Job template must be a Kubernetes Job: the client's own models read it, and
  # writing it back loses nothing (an unknown or misspelt field would be dropped).
  api = kubernetes.client.ApiClient()
  job = api._ApiClient__deserialize(template, 'V1JobTemplateSpec')
  assert api.sanitize_for_serialization(job) == template
  spec = job.spec
  assert spec.parallelism == spec.completions == 32  # v5p-256: 128 chips, 4 per VM
  pod = spec.template.spec
  assert pod.node_selector == {'cloud.google.com/gke-tpu-accelerator': 'tpu-v5p-slice',
                               'cloud.google.com/gke-tpu-topology': '4x4x8'}
  assert pod.containers[0].resources.limits == {'google.com/tpu': '4'}
  assert _train_part(pod.containers[0].command, 'python3') == TRAIN
  # Never restarted: config error and divergence fail the Job, and through it the JobSet.
  codes = spec.pod_failure_policy.rules[0].on_exit_codes.values
  assert 2 in codes and 3 in codes and 1 not in codes and 75 not in codes


def test_gke_gpu_nodes():
  m = yaml.safe_load(_dry(['gke', '--name', 'g', '--gpu', '2x8xh100', '--image', 'img']))
  c = m['spec']['replicatedJobs'][0]['template']['spec']['template']['spec']['containers'][0]
  assert c['resources']['limits'] == {'nvidia.com/gpu': '8'}
  assert '--num_processes=2' in c['command'] and '--process_id=$(JOB_COMPLETION_INDEX)' in c['command']


def test_bad_input_one_line(capsys):
  assert cli.main(['tpu', '--name', 'x', '--tpu', 'v5p-255', '--zone', 'z', '--dry_run', '--',
                   *TRAIN]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith('error: unknown topology') and '\n' not in err
  assert cli.main(['slurm', '--dry_run', '--', "--gin.MODEL_DIR='x'"]) == 2
  assert 'no --gin_file' in capsys.readouterr().err


def test_targets():
  t = targets.parse('2xv5p-256')
  assert (t.num_slices, t.chips_per_slice, t.topology, t.hosts_per_slice) == (2, 128, '4x4x8', 32)
  t = targets.parse('v5litepod-16')
  assert (t.chips_per_slice, t.topology, t.accelerator_type) == (16, '4x4', 'v5litepod-16')
  t = targets.parse('2x8xh200')
  assert (t.kind, t.num_chips) == ('gpu', 16)


def test_restarts_only_on_restartable_codes():
  # Real processes exiting with each code; a config error (2) is never restarted.
  def runner(codes):
    calls = []
    def once(attempt):
      calls.append(attempt)
      return subprocess.run([sys.executable, '-c', f'import sys; sys.exit({codes[attempt]})']).returncode
    return once, calls
  once, calls = runner([75, 1, 0])
  assert restarts.run_with_restarts(once, max_restarts=3, log=lambda *a: None) == 0
  assert calls == [0, 1, 2]
  once, calls = runner([1, 2, 0])
  assert restarts.run_with_restarts(once, max_restarts=3, log=lambda *a: None) == 2
  assert calls == [0, 1]
  once, calls = runner([4, 4, 4])
  assert restarts.run_with_restarts(once, max_restarts=1, log=lambda *a: None) == 4
  assert calls == [0, 1]


def test_bash_rule_matches_python_rule():
  fn = restarts.bash_is_restartable()
  for code in (0, 1, 2, 3, 4, 75, 137, 143):
    rc = subprocess.run(['bash', '-c', f'{fn}\nis_restartable {code}']).returncode
    assert (rc == 0) == restarts.exit_codes.is_restartable(code), code


def test_local_config_error_is_not_restarted(tmp_path):
  # The real train command: text files that are not there (the launcher's own check reads no data)
  # exit 2, and the launcher does not try again.
  res = subprocess.run(
      [sys.executable, '-m', 'launch', 'local', '--max_restarts', '2', '--',
       '--gin_file=gin_configs/examples/tiny_decoder_pretrain.gin',
       f"--gin.MODEL_DIR='{tmp_path / 'run'}'", '--gin.TRAIN_STEPS=1',
       f"--gin.TRAIN_FILES=['{tmp_path / 'missing.txt'}']"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert res.returncode == 2
  assert f'no file matches {tmp_path / "missing.txt"}' in res.stderr
  assert res.stdout.count('CONFIG_ERROR) is not restartable') == 1, res.stdout


@pytest.mark.parametrize('backend', [['local'], ['slurm', '--dry_run'],
                                     ['tpu', '--name', 'x', '--tpu', 'v5p-64', '--zone', 'z', '--dry_run'],
                                     ['gke', '--name', 'x', '--image', 'i', '--tpu', 'v5p-64', '--dry_run']])
def test_a_config_that_does_not_parse_is_refused_before_anything_is_launched(backend, tmp_path, capsys):
  tiny = '--gin_file=gin_configs/examples/tiny_decoder_pretrain.gin'
  run = f"--gin.MODEL_DIR='{tmp_path / 'run'}'"
  for train_args, problem in (
      ([tiny, run, '--gin.DecoderConfig.num_layer=2'],
       "Configurable 'DecoderConfig' doesn't have a parameter named 'num_layer'. (In bindings string "
       'line 2)'),
      ([tiny, run, '--gin.TRAIN_STEP=2'],
       'gin macro TRAIN_STEP is set on the command line but no gin file uses %TRAIN_STEP (misspelt?)'),
      (['--gin_file=gin_configs/examples/tiny_decoder_pretrian.gin', run],
       'gin file not found: gin_configs/examples/tiny_decoder_pretrian.gin'),
      ([tiny, run, '--gin.TrainerConfig.checkpoint_every=0'],  # (the trainer's own start checks)
       'TrainerConfig.checkpoint_every=0 must be >= 1 (a number of steps)')):
    out = io.StringIO()
    assert cli.main([*backend, '--', *train_args], out=out) == exit_codes.CONFIG_ERROR
    assert capsys.readouterr().err == (f'error: {problem} (checked before launching: nothing '
                                       'started; --no_config_check skips this, for gin files only '
                                       'the cluster has)\n')
    assert out.getvalue() == '' and not (tmp_path / 'run').exists()
  # A gin file that only the cluster has: the check is skipped on request.
  if '--dry_run' in backend:
    assert cli.main([*backend, '--no_config_check', '--',
                     '--gin_file=/on/the/cluster/only.gin', run], out=out) == 0
    assert '/on/the/cluster/only.gin' in out.getvalue()


@pytest.mark.parametrize('backend', [['local'], ['slurm'],
                                     ['gke', '--name', 'x', '--image', 'i', '--gpu', '2x8xh100']])
def test_a_config_that_reads_an_export_passes_the_check(backend):
  # (The check named a task in place of the data and DataConfig refused the export beside it:
  # 'set exactly one of mixture_or_task ... and export_dir', for every config of the TF-free path.)
  out = io.StringIO()
  assert cli.main([*backend, '--dry_run', '--',
                   '--gin_file=gin_configs/examples/tiny_decoder_from_export.gin',
                   "--gin.EXPORT_DIR='/data/export'", "--gin.MODEL_DIR='/runs/x'"], out=out) == 0
  assert 'tiny_decoder_from_export.gin' in out.getvalue() and '/data/export' in out.getvalue()


def test_local_dry_run_uses_launch_local_for_several_processes():
  argv = shlex.split(_dry(['local', '--num_processes', '2', '--devices_per_process', '4']))
  assert argv[1:5] == ['-m', 'launch.local', '--num_processes=2', '--devices_per_process=4']
  assert argv[argv.index('--') + 1:] == TRAIN
  argv = shlex.split(_dry(['local']))
  assert argv[1:3] == ['-m', 't5x_like.train'] and argv[3:] == TRAIN
