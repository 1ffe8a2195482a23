"""The slurm backend end to end on a real single-machine SLURM cluster that this test starts itself
(Debian's slurmctld, slurmd, slurm-client and munge; installed with apt-get when missing, as root):
a 2-task CPU job of the tiny decoder goes through `python -m launch slurm`, one task is killed with
SIGKILL mid-run, the batch script relaunches the step, and the job resumes from its checkpoint and
finishes. The daemons run on their own ports, socket and state directory and are stopped by pid."""
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ['slurmctld', 'slurmd', 'slurm-client', 'munge']


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _install():
  if all(shutil.which(b) for b in ('slurmctld', 'slurmd', 'sbatch', 'munged')):
    return
  assert os.geteuid() == 0, f'SLURM test needs root to apt-get install {PACKAGES}'
  env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
  subprocess.run(['apt-get', 'update', '-qq'], check=True, env=env, capture_output=True)
  subprocess.run(['apt-get', 'install', '-y', '-qq', '--no-install-recommends', *PACKAGES],
                 check=True, env=env, capture_output=True)


def _pid(path: pathlib.Path, timeout=20.0) -> int:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if path.exists() and path.read_text().strip():
      return int(path.read_text().split()[0])
    time.sleep(0.2)
  raise AssertionError(f'no pid file {path}')


@pytest.fixture(scope='module')
def slurm_cluster():
  _install()
  # Not under pytest's tmp dir: that is private to root and munged runs as the munge user.
  d = pathlib.Path(tempfile.mkdtemp(prefix='launch_slurm_'))
  d.chmod(0o755)
  munge_dir = d / 'munge'
  munge_dir.mkdir()
  munge_dir.chmod(0o755)  # munged wants the socket's directory searchable by all
  shutil.chown(munge_dir, 'munge', 'munge')
  sock = munge_dir / 'munge.socket'
  subprocess.run(['runuser', '-u', 'munge', '--', '/usr/sbin/munged', f'--socket={sock}',
                  f'--pid-file={munge_dir}/munged.pid', f'--log-file={munge_dir}/munged.log',
                  f'--seed-file={munge_dir}/munged.seed'], check=True)
  pids = [_pid(munge_dir / 'munged.pid')]
  for sub in ('state', 'spool'):
    (d / sub).mkdir()
  conf = d / 'slurm.conf'
  conf.write_text('\n'.join([
      'ClusterName=launchtest', 'SlurmctldHost=localhost', 'SlurmUser=root',
      f'SlurmctldPort={_free_port()}', f'SlurmdPort={_free_port()}',
      'AuthType=auth/munge', f'AuthInfo=socket={sock}', 'CredType=cred/munge',
      'ProctrackType=proctrack/linuxproc', 'TaskPlugin=task/none', 'SelectType=select/cons_tres',
      'SelectTypeParameters=CR_Core', 'JobAcctGatherType=jobacct_gather/none',
      'AccountingStorageType=accounting_storage/none', 'MpiDefault=none', 'ReturnToService=2',
      'MailProg=/bin/true', 'SlurmdParameters=config_overrides',
      f'StateSaveLocation={d}/state', f'SlurmdSpoolDir={d}/spool',
      f'SlurmctldPidFile={d}/slurmctld.pid', f'SlurmdPidFile={d}/slurmd.pid',
      f'SlurmctldLogFile={d}/slurmctld.log', f'SlurmdLogFile={d}/slurmd.log',
      'NodeName=localhost CPUs=4 Sockets=1 CoresPerSocket=4 ThreadsPerCore=1 RealMemory=2000',
      'PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP', '']))
  env = dict(os.environ, SLURM_CONF=str(conf))
  try:
    subprocess.run(['/usr/sbin/slurmctld', '-f', str(conf)], check=True, env=env)
    pids.append(_pid(d / 'slurmctld.pid'))
    subprocess.run(['/usr/sbin/slurmd', '-f', str(conf), '-N', 'localhost'], check=True, env=env)
    pids.append(_pid(d / 'slurmd.pid'))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
      state = subprocess.run(['sinfo', '-h', '-o', '%t'], env=env, capture_output=True, text=True)
      if state.stdout.strip() == 'idle':
        break
      time.sleep(1)
    else:
      raise AssertionError(f'SLURM node not idle: {state.stdout} {state.stderr}\n'
                           + (d / 'slurmctld.log').read_text()[-2000:])
    yield {'dir': d, 'env': env}
  finally:
    # Jobs first (slurmstepd and the job's processes outlive the daemons), then the daemons.
    subprocess.run(['scancel', '--partition=debug'], env=env, capture_output=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and subprocess.run(
        ['squeue', '-h'], env=env, capture_output=True, text=True).stdout.strip():
      time.sleep(1)
    for pid in reversed(pids):
      try:
        os.kill(pid, signal.SIGTERM)
      except ProcessLookupError:
        pass
    shutil.rmtree(d, ignore_errors=True)


def _train_pids(job_id: str, env) -> list[int]:
  out = subprocess.run(['scontrol', 'listpids', job_id], env=env, capture_output=True, text=True)
  pids = []
  for line in out.stdout.splitlines()[1:]:
    pid = line.split()[0]
    try:
      cmd = pathlib.Path(f'/proc/{pid}/cmdline').read_bytes()
    except OSError:
      continue
    args = cmd.split(b'\0')
    if os.path.basename(args[0]).startswith(b'python') and b't5x_like.train' in args:
      pids.append(int(pid))
  return pids


def test_slurm_job_is_killed_relaunched_and_resumes(slurm_cluster, small_text, tmp_path):
  env = slurm_cluster['env']
  log_dir, model_dir = tmp_path / 'logs', tmp_path / 'run'
  argv = [sys.executable, '-m', 'launch', 'slurm', '--job_name', 'tiny', '--nodes', '1',
          '--ntasks_per_node', '2', '--venv', sys.prefix, '--workdir', str(REPO),
          '--log_dir', str(log_dir), '--max_restarts', '1',
          '--env', 'XLA_FLAGS=--xla_force_host_platform_device_count=2',
          '--env', 'JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo', '--',
          '--gin_file=gin_configs/examples/tiny_decoder_pretrain.gin',
          f"--gin.MODEL_DIR='{model_dir}'", '--gin.TRAIN_STEPS=60',
          f"--gin.TRAIN_FILES=['{small_text['train']}']",
          f"--gin.VALIDATION_FILES=['{small_text['validation']}']",
          '--gin.TrainerConfig.checkpoint_every=10', '--gin.TrainerConfig.log_every=10',
          f'--compilation_cache_dir={tmp_path / "jax_cache"}']
  # (Popen as a context: the pipe is closed and the launcher reaped whichever way the test ends.)
  with subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                        text=True) as launcher:
    try:
      # Kill one task with SIGKILL once the first checkpoint is there.
      deadline = time.monotonic() + 300
      while not (model_dir / 'checkpoints' / '10').is_dir():
        assert launcher.poll() is None, launcher.stdout.read()
        assert time.monotonic() < deadline, 'no checkpoint at step 10 within 300 s'
        time.sleep(0.5)
      job_id = subprocess.run(['squeue', '-h', '-o', '%i', '-n', 'tiny'], env=env,
                              capture_output=True, text=True).stdout.split()[0]
      pids = _train_pids(job_id, env)
      assert len(pids) == 2, pids
      os.kill(pids[1], signal.SIGKILL)
      out, _ = launcher.communicate(timeout=600)
    finally:
      if launcher.poll() is None:
        launcher.kill()
  assert launcher.returncode == 0, out[-3000:]
  assert 'is restartable; relaunching (1/1)' in out
  assert 'Resuming from checkpoint at step' in out
  assert '(loaded from the compilation cache)' in out  # the relaunch did not compile again
  assert 'step 60/60' in out
  assert f'launch: job {job_id} COMPLETED with exit code 0' in out
