"""Two JAX processes against one: the command line with --distributed.

Two processes on this machine, one CPU device each, joined through a
coordinator on 127.0.0.1 and gloo collectives, run `main.py` on the tiny
config; they are killed mid-way through the teacher and rerun, and must end
with the parameters and samples of one process with two devices at the same
global batch.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from diffusion_distillation.runs import workdir as workdir_lib
from tests.helpers import HANG_SECS
from tests.helpers import REPO
from tests.helpers import TEST_CONFIG
from tests.helpers import TWO_CPU_DEVICES
from tests.helpers import assert_trees_close
from tests.helpers import saved_params
from tests.helpers import tiny_config

pytestmark = pytest.mark.slow  # minutes on 2 CPU cores

# One optimizer step per dispatch compiles twice as fast. Process 1 of a
# multi-process run never reads the persistent compilation cache (JAX writes
# it from process 0 only, under keys that differ between processes), so its
# compilations dominate the test's time.
_OVERRIDES = {'train.substeps': 1, 'distill.substeps': 1}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start(workdir, log_path, *, env, extra_flags=()):
  flags = [f'--config={TEST_CONFIG}', f'--workdir={workdir}', '--mode=all']
  flags += [f'--config.{k}={v}' for k, v in _OVERRIDES.items()]
  with open(log_path, 'w') as log:
    return subprocess.Popen(
        [
            sys.executable,
            '-m',
            'diffusion_distillation.main',
            *flags,
            *extra_flags,
        ],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, JAX_PLATFORMS='cpu', **env),
    )


def _start_pair(workdir, log_dir, attempt):
  """Processes 0 and 1 of one run, one CPU device each."""
  port = _free_port()
  env = {'XLA_FLAGS': '', 'JAX_COORDINATOR_BIND_ADDRESS': f'127.0.0.1:{port}'}
  return [
      _start(
          workdir,
          log_dir / f'{attempt}_process_{i}.log',
          env=env,
          extra_flags=[
              '--distributed',
              f'--coordinator_address=127.0.0.1:{port}',
              '--num_processes=2',
              f'--process_id={i}',
          ],
      )
      for i in range(2)
  ]


def _tail(path, chars=3000):
  with open(path) as f:
    return f.read()[-chars:]


def _wait(procs, logs, deadline):
  for proc, log in zip(procs, logs):
    try:
      proc.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
      raise AssertionError(f'timed out; {log}:\n{_tail(log)}') from None
    assert proc.returncode == 0, f'{log}:\n{_tail(log)}'


def _kill(procs):
  for proc in procs:
    if proc.poll() is None:
      proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_two_processes_resume_and_match_one_process_with_two_devices(tmp_path):
  two, one = str(tmp_path / 'two_processes'), str(tmp_path / 'one_process')
  # The reference runs alongside: the pair's process 0 mostly waits for
  # process 1 to compile.
  reference = _start(
      one,
      tmp_path / 'reference.log',
      env=TWO_CPU_DEVICES,
  )
  procs = []
  try:
    # Kill both processes as soon as the teacher has a checkpoint at step 2
    # of 4. (Mid-teacher rather than mid-distillation: the rerun compiles
    # train_step again either way, but nothing else twice.)
    procs = _start_pair(two, tmp_path, 'killed')
    mid_train = os.path.join(two, 'teacher', '2', 'commit_success.txt')
    deadline = time.time() + HANG_SECS
    while not os.path.exists(mid_train):
      for i, proc in enumerate(procs):
        assert proc.poll() is None, _tail(tmp_path / f'killed_process_{i}.log')
      assert time.time() < deadline, 'no teacher checkpoint appeared'
      time.sleep(0.02)
    _kill(procs)
    assert workdir_lib.saved_models(two) == [], 'killed after the teacher'

    # The same command again on both processes continues from step 2.
    procs = _start_pair(two, tmp_path, 'resumed')
    _wait(
        procs,
        [tmp_path / f'resumed_process_{i}.log' for i in range(2)],
        time.time() + HANG_SECS,
    )
    _wait([reference], [tmp_path / 'reference.log'], time.time() + HANG_SECS)
  finally:
    _kill(procs + [reference])

  assert 'JAX process 0/2' in _tail(tmp_path / 'resumed_process_0.log', 10**6)
  assert 'CpuDevice(id=1)]' in _tail(tmp_path / 'reference.log', 10**6)
  # Process 1 logs warnings only: process 0 speaks for the run.
  assert 'Round 2/2' in _tail(tmp_path / 'resumed_process_0.log', 10**6)
  assert 'Round 2/2' not in _tail(tmp_path / 'resumed_process_1.log', 10**6)

  config = tiny_config(**_OVERRIDES)
  assert (
      workdir_lib.saved_models(two)
      == workdir_lib.saved_models(one)
      == [0, 1, 2]
  )
  for num_steps in (0, 2, 1):
    # Equal up to float reassociation of the cross-device batch mean.
    assert_trees_close(
        saved_params(two, num_steps, config),
        saved_params(one, num_steps, config),
        atol=1e-5,
    )
  for name in ('samples_4_teacher', 'samples_2', 'samples_1', 'grid_1'):
    with np.load(os.path.join(two, 'samples', f'{name}.npz')) as a, np.load(
        os.path.join(one, 'samples', f'{name}.npz')
    ) as b:
      np.testing.assert_array_equal(a['arr_1'], b['arr_1'])
      diff = np.abs(a['arr_0'].astype(int) - b['arr_0'].astype(int))
      assert diff.max() <= 1, name  # uint8 rounding of equal floats
