"""What a hostile but fair user meets: divergence, corrupt and half-written
checkpoints, two runs on one workdir, bad input, a full or read-only disk.
Each is answered in one line, and nothing good is lost."""

import errno
import json
import os
import subprocess
import sys

import pytest

from configs import cifar10
from diffusion_distillation import checkpoints
from diffusion_distillation import cli
from diffusion_distillation import errors
from diffusion_distillation import pipeline
from diffusion_distillation import workdir as workdir_lib
from tests.conftest import TEST_CONFIG
from tests.conftest import assert_trees_close
from tests.conftest import run_python
from tests.conftest import saved_params
from tests.conftest import tiny_config

# Six teacher updates, a checkpoint after every two, one update per dispatch.
_SHORT = {
    'train.num_steps': 6,
    'train.substeps': 1,
    'checkpoint.every_steps': 2,
    'checkpoint.max_to_keep': 3,
    'log_every_steps': 100,
}


def _files(workdir):
  out = set()
  for root, _, names in os.walk(workdir):
    out.update(os.path.relpath(os.path.join(root, n), workdir) for n in names)
  return out


# ----------------------------------------------------------------------------
# Divergence: a non-finite state is never saved.


@pytest.mark.slow
def test_a_diverged_run_saves_no_nan_and_resumes_with_a_lower_rate(tmp_path):
  workdir = str(tmp_path / 'w')
  diverging = tiny_config(**_SHORT, **{'train.learning_rate': 1e3})
  with pytest.raises(errors.RunStopped) as stopped:
    pipeline.run_mode(diverging, workdir, 'train')
  message = str(stopped.value)
  assert '\n' not in message
  assert 'train diverged' in message and 'was not saved' in message
  assert '--config.train.learning_rate=100' in message
  saved = checkpoints.manager(os.path.join(workdir, 'teacher'), max_to_keep=3)
  good_steps = sorted(saved.all_steps())
  saved.close()
  assert good_steps and f'teacher/{good_steps[-1]}' in message
  assert workdir_lib.saved_models(workdir) == []

  # The fix the message offers is accepted by the workdir, and recorded.
  pipeline.run_mode(
      tiny_config(**_SHORT, **{'train.learning_rate': 1e-3}), workdir, 'train'
  )
  assert workdir_lib.saved_models(workdir) == [0]
  with open(os.path.join(workdir, 'config_changes.json')) as f:
    changes = json.load(f)
  assert changes[-1]['changed'] == {
      'train.learning_rate': {'from': 1000.0, 'to': 0.001}
  }
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['train']['learning_rate'] == 0.001


@pytest.mark.slow
def test_skipping_non_finite_updates_is_logged_and_bounded(tmp_path, caplog):
  config = tiny_config(**{
      **_SHORT,
      'train.num_steps': 24,
      'train.learning_rate': 1e3,
      'train.skip_nonfinite_updates': True,
  })
  with pytest.raises(errors.RunStopped, match='updates were non-finite and '):
    pipeline.run_mode(config, str(tmp_path / 'w'), 'train')
  assert any(
      'skipped' in r.getMessage() and r.levelname == 'WARNING'
      for r in caplog.records
  )
  assert workdir_lib.saved_models(str(tmp_path / 'w')) == []


# ----------------------------------------------------------------------------
# Corrupt, empty and half-written checkpoints.


def _truncate_largest_file(directory):
  sizes = []
  for root, _, names in os.walk(directory):
    sizes += [
        (os.path.getsize(os.path.join(root, n)), os.path.join(root, n))
        for n in names
    ]
  with open(max(sizes)[1], 'r+b') as f:
    f.truncate(10)


# With filterwarnings=error, an echo of orbax's aborted reads that the
# library did not drop (checkpoints._drop_aborted_read_echoes) fails this
# test or a later one.
@pytest.mark.slow
@pytest.mark.parametrize('damage', ['truncated', 'empty'])
def test_a_bad_latest_checkpoint_is_moved_aside_and_the_one_before_used(
    tmp_path, damage, caplog
):
  workdir = str(tmp_path / 'w')
  config = tiny_config(**_SHORT)
  reference = str(tmp_path / 'reference')
  pipeline.run_mode(config, reference, 'train')

  pipeline.run_mode(config, workdir, 'train')
  teacher = os.path.join(workdir, 'teacher')
  # Without its final model the teacher resumes from its checkpoints.
  for name in os.listdir(os.path.join(workdir, 'models')):
    os.rename(
        os.path.join(workdir, 'models', name), str(tmp_path / f'old_{name}')
    )
  if damage == 'truncated':
    _truncate_largest_file(os.path.join(teacher, '6', 'state'))
    bad = '6'
  else:
    os.makedirs(os.path.join(teacher, '8'))
    bad = '8'
  pipeline.run_mode(config, workdir, 'train')

  warnings = [
      r.getMessage()
      for r in caplog.records
      if 'does not restore' in r.getMessage()
  ]
  assert len(warnings) == 1 and '\n' not in warnings[0]
  assert f'teacher/{bad} does not restore' in warnings[0]
  aside = os.listdir(os.path.join(workdir, 'teacher.corrupt'))
  assert len(aside) == 1 and aside[0].startswith(f'{bad}-')  # kept, not deleted
  # Resumed from the one before, it ends where an undamaged run ends.
  assert_trees_close(
      saved_params(workdir, 0, config), saved_params(reference, 0, config)
  )


@pytest.mark.slow
def test_half_written_checkpoints_of_a_killed_run_are_cleaned(tmp_path):
  workdir = str(tmp_path / 'w')
  config = tiny_config(**_SHORT)
  pipeline.run_mode(config, workdir, 'train')
  tmp_dir = os.path.join(workdir, 'teacher', '4.orbax-checkpoint-tmp-1234')
  os.makedirs(tmp_dir)
  os.rename(os.path.join(workdir, 'models'), str(tmp_path / 'models'))
  pipeline.run_mode(config, workdir, 'train')
  assert not os.path.exists(tmp_dir)


@pytest.mark.slow
def test_a_round_killed_after_its_model_still_gets_its_grid(tmp_path):
  workdir = str(tmp_path / 'w')
  config = tiny_config(**{'train.substeps': 1, 'distill.substeps': 1})
  pipeline.run_mode(config, workdir, 'train')
  pipeline.run_mode(config, workdir, 'distill')
  samples = os.path.join(workdir, 'samples')
  for grid in ('grid_teacher_4.png', 'grid_2.png', 'grid_1.png'):
    os.remove(os.path.join(samples, grid))
  pipeline.run_mode(config, workdir, 'train')
  pipeline.run_mode(config, workdir, 'distill')
  for grid in ('grid_teacher_4.png', 'grid_2.png', 'grid_1.png'):
    assert os.path.getsize(os.path.join(samples, grid)) > 0


# ----------------------------------------------------------------------------
# One writer per workdir.


def _dead_pid():
  process = subprocess.Popen([sys.executable, '-c', 'pass'])
  process.wait()
  return process.pid


def test_a_second_run_on_a_workdir_is_refused_naming_the_holder(tmp_path):
  workdir = tmp_path / 'w'
  workdir.mkdir()
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import time; time.sleep(600)']
  )
  try:
    (workdir / 'lock').write_text(
        json.dumps({
            'host': os.uname().nodename,
            'pid': holder.pid,
            'started': 'earlier',
        })
    )
    before = _files(workdir)
    with pytest.raises(errors.InputError) as refused:
      pipeline.run_mode(tiny_config(**_SHORT), str(workdir), 'train')
    assert f'in use by process {holder.pid}' in str(refused.value)
    assert '\n' not in str(refused.value)
    assert _files(workdir) == before
  finally:
    holder.kill()
    holder.wait()


@pytest.mark.slow
def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog):
  workdir = tmp_path / 'w'
  workdir.mkdir()
  (workdir / 'lock').write_text(
      json.dumps({
          'host': os.uname().nodename,
          'pid': _dead_pid(),
          'started': 'earlier',
      })
  )
  pipeline.run_mode(tiny_config(**_SHORT), str(workdir), 'train')
  assert any('Taking over' in r.getMessage() for r in caplog.records)
  assert not (workdir / 'lock').exists()  # released at the end
  assert workdir_lib.saved_models(str(workdir)) == [0]


# ----------------------------------------------------------------------------
# Bad input: one line, before anything is written.


@pytest.mark.parametrize(
    'overrides,mode,message',
    [
        ({'train.batch_size': 0}, 'train', 'train.batch_size=0: a batch needs'),
        ({'train.batch_size': -8}, 'train', 'train.batch_size=-8'),
        ({'checkpoint.max_to_keep': 0}, 'train', 'keep at least 1'),
        ({'checkpoint.max_to_keep': -1}, 'train', 'max_to_keep=-1'),
        ({'train.max_skipped_fraction': 1.5}, 'train', r'in \[0, 1\)'),
        ({}, 'sample', 'No models in'),
        ({}, 'eval', 'No models in'),
        ({}, 'distill', 'Missing teacher checkpoint'),
    ],
)
def test_bad_input_writes_nothing(tmp_path, overrides, mode, message):
  workdir = str(tmp_path / 'w')
  with pytest.raises(errors.InputError, match=message):
    pipeline.run_mode(tiny_config(**overrides), workdir, mode)
  assert not os.path.exists(workdir)


def test_a_workdir_that_is_a_file_is_refused(tmp_path):
  path = tmp_path / 'a_file'
  path.write_text('mine')
  with pytest.raises(errors.InputError, match='is a file'):
    pipeline.run_mode(tiny_config(), str(path), 'train')
  assert path.read_text() == 'mine'


def test_unprepared_tfds_data_writes_nothing(tmp_path):
  config = cifar10.get_config()
  config.dataset.data_dir = str(tmp_path / 'empty')
  workdir = str(tmp_path / 'w')
  with pytest.raises(errors.InputError, match='tfds build cifar10'):
    pipeline.run_mode(config, workdir, 'train')
  assert not os.path.exists(workdir)


@pytest.mark.slow
@pytest.mark.parametrize(
    'flags,message',
    [
        (
            ['--config=configs/nope.py'],
            '--config=configs/nope.py: no such file',
        ),
        (['--config={syntax}'], 'line 1: invalid syntax'),
        (
            [f'--config={TEST_CONFIG}', '--config.train.bogus=1'],
            "--config.train.bogus: train has no field 'bogus'",
        ),
        ([f'--config={TEST_CONFIG}', '--mode=fly'], "Unknown --mode='fly'"),
    ],
)
def test_command_line_input_errors_are_one_line_with_status_2(
    tmp_path, flags, message
):
  syntax = tmp_path / 'syntax.py'
  syntax.write_text('def get_config(:\n')
  flags = [f.format(syntax=syntax) for f in flags]
  workdir = tmp_path / 'w'
  result = run_python(
      ['-m', 'diffusion_distillation.main', f'--workdir={workdir}'] + flags
  )
  assert result.returncode == 2, result.stderr[-2000:]
  errors_printed = [
      line for line in result.stderr.splitlines() if line.startswith('error')
  ]
  assert len(errors_printed) == 1 and message in errors_printed[0]
  assert 'Traceback' not in result.stderr
  assert not workdir.exists()


# ----------------------------------------------------------------------------
# A full or read-only disk.


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


def test_closed_event_loop_echoes_are_dropped_and_other_errors_kept(capsys):
  def hook_output(error):
    cli._quiet_excepthook(type(error), error, None)
    return capsys.readouterr().err

  assert hook_output(RuntimeError('Event loop is closed')) == ''
  assert 'a real failure' in hook_output(RuntimeError('a real failure'))


class _RaisesWhenCollected:
  """Reports `message` through sys.unraisablehook when collected."""

  def __init__(self, message):
    self.message = message

  def __del__(self):
    raise RuntimeError(self.message)


def _unraisable_output(message, capsys) -> str:
  _RaisesWhenCollected(message)  # collected at once: reference count 0
  return capsys.readouterr().err


def test_closed_event_loop_unraisables_are_dropped_and_others_kept(
    capsys, monkeypatch
):
  monkeypatch.setattr(sys, 'unraisablehook', cli._quiet_unraisablehook)
  assert _unraisable_output('Event loop is closed', capsys) == ''
  assert 'a real failure' in _unraisable_output('a real failure', capsys)


def test_a_failed_restore_drops_only_its_aborted_reads_echoes(
    capsys, monkeypatch
):
  monkeypatch.setattr(sys, 'unraisablehook', sys.__unraisablehook__)
  monkeypatch.setattr(checkpoints._EchoFilter, 'failed', False)
  monkeypatch.setattr(checkpoints._EchoFilter, '_previous', None)
  checkpoints._EchoFilter.install()
  checkpoints._EchoFilter.install()  # wraps once
  for echo in checkpoints._ABORTED_READ_ECHOES:
    assert _unraisable_output(f'x {echo} y', capsys) == ''
  assert 'a real failure' in _unraisable_output('a real failure', capsys)
  checkpoints._EchoFilter.uninstall_unless_failed()  # a restore succeeded
  assert sys.unraisablehook is sys.__unraisablehook__


# ----------------------------------------------------------------------------
# A busy machine: the CPU split's collectives wait for a descheduled device.

_STALLED_DEVICE = r"""
import sys, time
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import PartitionSpec as P
from diffusion_distillation import cli

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
