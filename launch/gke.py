"""GKE: a JobSet manifest (jobset.x-k8s.io/v1alpha2) for TPU slices or GPU node pools, applied with
kubectl.

    python -m launch gke --name my-run --tpu v5p-256 [--num_slices 2] --image IMAGE \
        [--dry_run [--output jobset.yaml]] -- --gin_file=... --gin.MODEL_DIR="'gs://b/run'"
    python -m launch gke --name my-run --gpu 2x8xh100 --image IMAGE -- ...

One replicated Job per TPU slice (or one for the GPU nodes), one pod per TPU VM / GPU node, selected by
GKE's accelerator and topology node labels. Restarts: the container's exit code decides, as the
trainer's exit codes say. Codes that are not restartable (config error, divergence) fail the Job
through its podFailurePolicy and the JobSet through its failurePolicy rule; any other failure
restarts the whole JobSet (all slices together, as jax.distributed requires), at most --max_restarts
times, and the run resumes from its checkpoint (MODEL_DIR must be on shared storage, e.g. gs://).
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from typing import Optional, Sequence

import yaml

from launch import command
from launch import targets as targets_lib
from t5x_like import exit_codes

COORDINATOR_PORT = 1234
CONTAINER = 'train'


def _not_restartable() -> list[int]:
  return sorted(c for c in range(1, 129) if not exit_codes.is_restartable(c))


def manifest(train_args: Sequence[str], *, name: str, image: str, tpu: Optional[str] = None,
             gpu: Optional[str] = None, num_slices: int = 1, max_restarts: int = 3,
             env: Sequence[str] = (), workdir: str = '/app') -> dict:
  if bool(tpu) == bool(gpu):
    raise ValueError('give one of --tpu (v5p-256, ...) or --gpu (8xh100, 2x8xh200)')
  target = targets_lib.parse(tpu or gpu)
  if target.kind != ('tpu' if tpu else 'gpu'):
    raise ValueError(f'{tpu or gpu}: not a {"TPU" if tpu else "GPU"} target')
  envs = []
  for kv in env:
    key, sep, value = kv.partition('=')
    if not sep:
      raise ValueError(f'--env {kv!r}: expected KEY=VALUE')
    envs.append({'name': key, 'value': value})
  args = command.train_argv(train_args, python='python3', distributed=tpu is not None)
  if tpu:
    replicas, pods = num_slices, target.hosts_per_slice
    node_selector = {'cloud.google.com/gke-tpu-accelerator': target.gke_accelerator,
                     'cloud.google.com/gke-tpu-topology': target.topology}
    resources = {'limits': {'google.com/tpu': str(target.chips_per_host)}}
  else:
    if num_slices != 1:
      raise ValueError('--num_slices is for TPUs; GPU node count comes from --gpu NxGxh100')
    replicas, pods = 1, target.num_slices
    node_selector = {'cloud.google.com/gke-accelerator': target.gke_accelerator}
    resources = {'limits': {'nvidia.com/gpu': str(target.chips_per_slice)}}
    # jax.distributed on GPUs: pod 0 of the Job coordinates (JobSet gives pods stable DNS names);
    # Kubernetes expands $(JOB_COMPLETION_INDEX) in args.
    args += [f'--coordinator_address={name}-slice-0-0.{name}:{COORDINATOR_PORT}',
             f'--num_processes={pods}', '--process_id=$(JOB_COMPLETION_INDEX)']
  container = {'name': CONTAINER, 'image': image, 'workingDir': workdir, 'command': args,
               'resources': resources, 'ports': [{'containerPort': COORDINATOR_PORT}]}
  if envs:
    container['env'] = envs
  job_spec = {
      'parallelism': pods, 'completions': pods, 'completionMode': 'Indexed', 'backoffLimit': 0,
      'podFailurePolicy': {'rules': [
          {'action': 'FailJob', 'onExitCodes': {'containerName': CONTAINER, 'operator': 'In',
                                                'values': _not_restartable()}}]},
      'template': {'spec': {'restartPolicy': 'Never', 'nodeSelector': node_selector,
                            'containers': [container]}},
  }
  return {
      'apiVersion': 'jobset.x-k8s.io/v1alpha2', 'kind': 'JobSet',
      'metadata': {'name': name, 'annotations': {
          'alpha.jobset.sigs.k8s.io/exclusive-topology': 'cloud.google.com/gke-nodepool'}},
      'spec': {
          'failurePolicy': {'maxRestarts': max_restarts, 'rules': [
              {'name': 'not-restartable', 'action': 'FailJobSet',
               'onJobFailureReasons': ['PodFailurePolicy']}]},
          'network': {'enableDNSHostnames': True},
          'replicatedJobs': [{'name': 'slice', 'replicas': replicas,
                              'template': {'spec': job_spec}}],
      },
  }


def add_args(p) -> None:
  p.add_argument('--name', required=True)
  p.add_argument('--image', required=True, help='container image with the code installed')
  p.add_argument('--tpu', help='TPU type of one slice: v5p-256, v6e-16, ...')
  p.add_argument('--gpu', help='GPU nodes: 8xh100, 2x8xh200')
  p.add_argument('--num_slices', type=int, default=1)
  p.add_argument('--workdir', default='/app', help='where the code is in the image')
  p.add_argument('--env', action='append', default=[], help='KEY=VALUE for the container')
  p.add_argument('--max_restarts', type=int, default=3)


def main(args, train_args: Sequence[str], out=sys.stdout) -> int:
  m = manifest(train_args, name=args.name, image=args.image, tpu=args.tpu, gpu=args.gpu,
               num_slices=args.num_slices, max_restarts=args.max_restarts, env=args.env,
               workdir=args.workdir)
  text = yaml.safe_dump(m, sort_keys=False)
  if args.dry_run:
    command.write_output(text, args.output, out)
    return 0
  path = args.output
  if not path:
    with tempfile.NamedTemporaryFile('w', suffix='.yaml', delete=False) as f:
      path = f.name
  with open(path, 'w') as f:
    f.write(text)
  rc = subprocess.run(['kubectl', 'apply', '-f', path]).returncode
  if rc == 0:
    print(f'launch: applied {path}; follow with: kubectl get jobset {args.name} -w '
          f'&& kubectl logs -f -l jobset.sigs.k8s.io/jobset-name={args.name} --max-log-requests=1')
  return rc
