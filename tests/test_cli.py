"""utils/cli.py: the commands' one-line errors and exit statuses (a full or
read-only disk named, a bug keeping its traceback), and the CPU split's
patient collectives, which wait out a device thread a busy machine
deschedules."""

import errno
import os
import subprocess
import sys

import pytest

from diffusion_distillation.utils import cli
from diffusion_distillation.utils import errors
from tests.helpers import run_python


@pytest.mark.parametrize(
    'code,named',
    [
        (errno.ENOSPC, 'the disk is full'),
        (errno.EROFS, 'the file system is read-only'),
    ],
)
def test_storage_errors_are_named_in_one_line(capsys, code, named):
  def failing_save():
    try:
      raise OSError(code, os.strerror(code), '/w/teacher/4')
    except OSError as e:  # orbax and tensorstore wrap what the OS said
      raise ValueError('async save failed') from e

  with pytest.raises(SystemExit) as exit_info, cli.one_line_errors():
    failing_save()
  assert exit_info.value.code == cli.EXIT_STOPPED
  printed = capsys.readouterr().err.strip().splitlines()
  assert len(printed) == 1 and named in printed[0]
  assert 'rerun the same command to resume' in printed[0]


def test_storage_errors_known_only_by_their_text_are_named():
  error = RuntimeError(
      'tensorstore: Error writing "x": [Errno 28] No space left on device'
  )
  assert cli.storage_problem(error) == 'the disk is full'
  assert cli.storage_problem(RuntimeError('a bug')) == ''


def test_other_errors_keep_their_traceback():
  with pytest.raises(KeyError), cli.one_line_errors():
    raise KeyError('a bug to report')


def test_run_stopped_exits_with_status_3(capsys):
  with pytest.raises(SystemExit) as exit_info, cli.one_line_errors():
    raise errors.RunStopped('train diverged: ...')
  assert exit_info.value.code == 3
  assert capsys.readouterr().err == 'error: train diverged: ...\n'


_STALLED_DEVICE = r"""
import sys, time
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import PartitionSpec as P
from diffusion_distillation.utils import cli

cli.split_cpu(2)  # as the command does

def late_on_device_0(x):
  # Device 0's thread arrives at the all-reduce after the other has waited
  # longer than XLA:CPU's default abort (20 s warning + 40 s).
  if float(np.asarray(x).ravel()[0]) == 0.0:
    time.sleep(float(sys.argv[1]))
  return np.asarray(x)

mesh = jax.make_mesh((2,), ('d',), axis_types=(jax.sharding.AxisType.Auto,))

def per_device(x):
  y = jax.pure_callback(
      late_on_device_0, jax.ShapeDtypeStruct(x.shape, x.dtype), x)
  return jax.lax.psum(y, 'd')

total = jax.jit(jax.shard_map(
    per_device, mesh=mesh, in_specs=P('d'), out_specs=P()))(jnp.arange(2.0))
print('sum', float(total[0]))
"""


def test_with_patient_collectives_keeps_the_users_own_values():
  flags = cli.with_patient_collectives(
      '--xla_force_host_platform_device_count=2 '
      '--xla_cpu_collective_call_terminate_timeout_seconds=5'
  )
  assert '--xla_force_host_platform_device_count=2' in flags
  assert flags.count('xla_cpu_collective_call_terminate_timeout_seconds') == 1
  assert '--xla_cpu_collective_call_terminate_timeout_seconds=5' in flags
  for name in cli.PATIENT_COLLECTIVES:
    assert f'--{name}=' in flags
  assert cli.with_patient_collectives(flags) == flags


@pytest.mark.slow
def test_a_device_descheduled_past_the_xla_abort_on_a_busy_cpu_is_waited_for():
  # Busy loops on every core for the run's whole length, and one device
  # thread held back 65 s: XLA's default aborts the process at 60 s.
  hogs = [
      subprocess.Popen([sys.executable, '-c', 'while True: pass'])
      for _ in range(2 * (os.cpu_count() or 1))
  ]
  try:
    result = run_python(['-c', _STALLED_DEVICE, '65'], env={'XLA_FLAGS': ''})
  finally:
    for hog in hogs:
      hog.kill()
      hog.wait()
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'sum 1.0' in result.stdout
  assert 'Termination timeout' not in result.stderr
  assert 'may be stuck' not in result.stderr
