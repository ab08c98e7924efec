"""What a hostile but fair user meets: divergence, corrupt and half-written
checkpoints, two runs on one workdir, bad input, a full or read-only disk.
Each is answered in one line, and nothing good is lost."""

import errno
import json
import logging
import os
import socket
import subprocess
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
import pytest

from configs import cifar10
from diffusion_distillation import pipeline
from diffusion_distillation.runs import workdir as workdir_lib
from diffusion_distillation.runs import workdir_lock
from diffusion_distillation.training import checkpoints
from diffusion_distillation.training import health
from diffusion_distillation.training import trainer as trainer_lib
from diffusion_distillation.utils import cli
from diffusion_distillation.utils import errors
from diffusion_distillation.utils import quiet
from tests.conftest import HANG_SECS
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


class _State(NamedTuple):
  params: dict
  opt_state: dict


def _state(weight, moment=1.0):
  return _State(
      {'w': jnp.full((3,), weight, jnp.float32)},
      {'mu': jnp.full((3,), moment, jnp.float32)},
  )


def _guard(skip=False, last_good='w/teacher/4'):
  phase = ml_collections.ConfigDict({
      'learning_rate': 1e30,
      'substeps': 2,
      'max_skipped_fraction': 0.1,
      'skip_nonfinite_updates': skip,
  })
  return health.StateGuard('train', phase, _state(0.5).params, last_good)


def test_a_finite_state_whose_parameters_blew_up_is_refused():
  guard = _guard()
  guard.check(_state(400.0), 6)  # within GROWTH_LIMIT of max(0.5, 1)
  with pytest.raises(errors.RunStopped) as stopped:
    guard.check(_state(1.01e30), 8)
  message = str(stopped.value)
  assert 'train diverged: its largest parameter grew to 1.01e+30' in message
  assert 'the last good checkpoint is w/teacher/4' in message
  assert '--config.train.learning_rate=1e+29' in message
  assert 'skip_nonfinite_updates' not in message  # it cannot help a blow-up


def test_growth_is_judged_against_the_last_saved_state():
  guard = _guard()
  guard.check(_state(900.0), 6)
  guard.saved('w/teacher/6')
  guard.check(_state(9e5), 8)  # 1000x the saved state's 900, not the start's
  with pytest.raises(errors.RunStopped, match='w/teacher/6'):
    guard.check(_state(1e9), 10)


def test_skipping_is_offered_only_after_healthy_training_at_that_rate():
  with pytest.raises(errors.RunStopped) as at_once:
    _guard().check(_state(float('nan')), 2)
  assert 'skip_nonfinite_updates' not in str(at_once.value)
  guard = _guard()
  guard.check(_state(0.6), 2)
  with pytest.raises(errors.RunStopped) as later:
    guard.check(_state(0.7, moment=float('inf')), 4)
  assert 'state holds NaN or inf at step 4' in str(later.value)
  assert '--config.train.skip_nonfinite_updates=True' in str(later.value)


def test_too_many_skipped_updates_name_the_last_good_checkpoint():
  guard = _guard(skip=True)
  for _ in range(5):
    guard.dispatched({'nonfinite': jnp.int32(1)})
  with pytest.raises(errors.RunStopped) as stopped:
    guard.check(_state(0.5), 10)
  message = str(stopped.value)
  assert '5 of the last 10 updates were non-finite' in message
  assert 'The state at step 10 was not saved' in message
  assert 'the last good checkpoint is w/teacher/4' in message
  assert 'The state was not saved' not in message


# The scenario: a good checkpoint, then a rate that blows the
# parameters up to a finite ~1e30 in one update, with skipping on (the next
# update is NaN and skipped). Eight updates, one per dispatch, checkpoints
# every two, two kept: three saves after the blow-up would rotate the good
# one out.
_BLOW_UP = {
    'train.num_steps': 8,
    'train.substeps': 1,
    'checkpoint.every_steps': 2,
    'checkpoint.max_to_keep': 2,
    'log_every_steps': 100,
    'train.learning_rate': 1e30,
    'train.skip_nonfinite_updates': True,
}


def _teacher_steps(workdir):
  saved = checkpoints.manager(os.path.join(workdir, 'teacher'), max_to_keep=2)
  steps = sorted(saved.all_steps())
  saved.close()
  return steps


@pytest.mark.slow
def test_skipping_at_a_blowing_up_rate_keeps_the_last_good_checkpoint(
    tmp_path,
):
  workdir = str(tmp_path / 'w')
  config = tiny_config(**_BLOW_UP)
  # The good checkpoint: the initial state, saved as a run saves it.
  run = pipeline.Run(config, workdir)
  trainer = trainer_lib.build(config, 'train', run.mesh)
  state = trainer.fresh_state(
      trainer.init_params(jax.random.key(0)), num_sample_steps=0
  )
  saved = checkpoints.manager(os.path.join(workdir, 'teacher'), max_to_keep=2)
  checkpoints.save(saved, 0, state, {'phase': 'train'})
  saved.close()

  with pytest.raises(errors.RunStopped) as stopped:
    pipeline.run_mode(config, workdir, 'train')
  message = str(stopped.value)
  assert 'train diverged' in message, message
  assert f'last good checkpoint is {workdir}/teacher/0' in message
  assert 'skip_nonfinite_updates' not in message  # it cannot help here
  assert _teacher_steps(workdir) == [0]  # nothing saved after it


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
# library did not drop (quiet.ABORTED_READS) fails this
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
  with pytest.raises(errors.InputError, match='data.prepare cifar10'):
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


@pytest.fixture
def bare_hooks(monkeypatch):
  """The interpreter's own hooks and no echoes dropped, as a process
  starts; everything is put back after the test."""
  monkeypatch.setattr(sys, 'unraisablehook', sys.__unraisablehook__)
  monkeypatch.setattr(sys, 'excepthook', sys.__excepthook__)
  monkeypatch.setattr(quiet._hooks, 'previous', None)
  for group in (quiet.CLOSED_EVENT_LOOP, quiet.ABORTED_READS):
    monkeypatch.setattr(group, 'installed', False)
    monkeypatch.setattr(group, 'kept', False)


def test_closed_event_loop_echoes_are_dropped_and_other_errors_kept(
    capsys, bare_hooks
):
  quiet.CLOSED_EVENT_LOOP.install()

  def hook_output(error):
    sys.excepthook(type(error), error, None)
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
    capsys, bare_hooks
):
  quiet.CLOSED_EVENT_LOOP.install()
  assert _unraisable_output('Event loop is closed', capsys) == ''
  assert 'a real failure' in _unraisable_output('a real failure', capsys)


def test_a_failed_restore_drops_only_its_aborted_reads_echoes(
    capsys, bare_hooks
):
  quiet.ABORTED_READS.install()
  quiet.ABORTED_READS.install()  # wraps once
  for echo in quiet.ABORTED_READS.texts:
    assert _unraisable_output(f'x {echo} y', capsys) == ''
  assert 'a real failure' in _unraisable_output('a real failure', capsys)
  quiet.ABORTED_READS.uninstall_unless_kept()  # a restore succeeded
  assert sys.unraisablehook is sys.__unraisablehook__


def test_library_info_is_hidden_by_logger_and_package_not_path_words():
  chatter = quiet._LibraryChatter(reported=cli.storage_problem)
  orbax_file = os.path.join(os.path.dirname(ocp.__file__), 'manager.py')

  def shown(name, level, pathname='/src/x.py', error=None):
    exc_info = (type(error), error, None) if error else None
    return chatter.filter(
        logging.LogRecord(name, level, pathname, 1, 'm', (), exc_info)
    )

  assert not shown('jax._src.dispatch', logging.INFO)
  assert shown('jax._src.dispatch', logging.WARNING)
  assert not shown('absl', logging.INFO, orbax_file)
  assert shown('absl', logging.WARNING, orbax_file)
  full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  assert not shown('absl', logging.ERROR, orbax_file, full)
  # The project's own progress, wherever the checkout is.
  assert shown('absl', logging.INFO, '/home/u/jax/diffusion_distillation/x.py')


# ----------------------------------------------------------------------------
# A busy machine: the CPU split's collectives wait for a descheduled device.

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


# ----------------------------------------------------------------------------
# The lock: written whole, stale when unreadable, on a lease across hosts.


def _lock_of(workdir) -> dict:
  return json.loads((workdir / 'lock').read_text())


def _another_hosts_lock(workdir, **fields):
  (workdir / 'lock').write_text(
      json.dumps(
          dict(host='another-host', pid=123, started='earlier', **fields)
      )
  )


@pytest.mark.parametrize(
    'left',
    ['empty', 'half-written', 'this process id, from an earlier process'],
)
def test_a_lock_left_unreadable_or_by_an_earlier_process_is_taken_over(
    tmp_path, caplog, left
):
  workdir = tmp_path / 'w'
  workdir.mkdir()
  lock = workdir / 'lock'
  if left == 'empty':  # its write failed (a full disk) or was killed
    lock.write_text('')
  elif left == 'half-written':
    lock.write_text('{"host": "')
  else:  # a restarted container's process ids start over
    lock.write_text(
        json.dumps({'host': socket.gethostname(), 'pid': os.getpid()})
    )
  long_ago = time.time() - 3600
  os.utime(lock, (long_ago, long_ago))
  with workdir_lock.WorkdirLock(str(workdir)):
    assert _lock_of(workdir)['pid'] == os.getpid()
  assert any('Taking over' in r.getMessage() for r in caplog.records)
  assert not lock.exists()


def test_an_unreadable_lock_being_written_is_waited_for(tmp_path, monkeypatch):
  monkeypatch.setattr(workdir_lock, 'UNREADABLE_GRACE_SECS', 2.0)
  workdir = tmp_path / 'w'
  workdir.mkdir()
  (workdir / 'lock').write_text('')  # just now: maybe still being written
  start = time.time()
  with workdir_lock.WorkdirLock(str(workdir)):
    # Not before the grace ends (less the file times' 1 s resolution).
    assert time.time() - start >= 1.0
    assert _lock_of(workdir)['pid'] == os.getpid()


def test_a_lock_is_written_whole_and_leaves_no_temporary_file(tmp_path):
  workdir = tmp_path / 'w'
  with workdir_lock.WorkdirLock(str(workdir)):
    assert sorted(os.listdir(workdir)) == ['lock']
    assert _lock_of(workdir)['host'] == socket.gethostname()
  assert os.listdir(workdir) == []


def test_another_hosts_lock_is_taken_over_only_past_its_lease(tmp_path, caplog):
  workdir = tmp_path / 'w'
  workdir.mkdir()
  lease = workdir_lock.LEASE_SECS
  _another_hosts_lock(workdir, renewed=time.time() - 10, lease_secs=lease)
  with pytest.raises(errors.InputError) as refused:
    with workdir_lock.WorkdirLock(str(workdir)):
      pass
  assert 'in use by process 123 on another-host' in str(refused.value)
  assert 'lease ends at' in str(refused.value)
  assert _lock_of(workdir)['host'] == 'another-host'

  _another_hosts_lock(
      workdir, renewed=time.time() - 2 * lease, lease_secs=lease
  )
  with workdir_lock.WorkdirLock(str(workdir)):
    assert _lock_of(workdir)['pid'] == os.getpid()
  (warning,) = [
      r.getMessage() for r in caplog.records if 'Taking' in r.getMessage()
  ]
  assert 'another-host has not renewed it' in warning


def test_another_hosts_lock_of_a_version_without_leases_ages_by_its_file(
    tmp_path,
):
  workdir = tmp_path / 'w'
  workdir.mkdir()
  _another_hosts_lock(workdir)
  with pytest.raises(errors.InputError, match='in use by process 123'):
    with workdir_lock.WorkdirLock(str(workdir)):
      pass
  long_ago = time.time() - 2 * workdir_lock.LEASE_SECS
  os.utime(workdir / 'lock', (long_ago, long_ago))
  with workdir_lock.WorkdirLock(str(workdir)):
    assert _lock_of(workdir)['pid'] == os.getpid()


class _Clock:
  """The `time` module, but time.time() returns `now`."""

  def __init__(self, now):
    self.now = now

  def time(self):
    return self.now

  def __getattr__(self, name):
    return getattr(time, name)


def test_a_running_holder_renews_its_lease(tmp_path, monkeypatch):
  clock = _Clock(1_000_000.0)
  monkeypatch.setattr(workdir_lock, 'time', clock)
  workdir = tmp_path / 'w'
  lease = 60.0
  with workdir_lock.WorkdirLock(
      str(workdir), lease_secs=lease, renew_secs=0.01
  ):
    assert _lock_of(workdir)['renewed'] == clock.now
    clock.now += 10 * lease  # unrenewed, the lease would be long over
    deadline = time.time() + HANG_SECS
    while _lock_of(workdir)['renewed'] != clock.now:
      assert time.time() < deadline, 'the lease was not renewed'
      time.sleep(0.01)
    monkeypatch.setattr(socket, 'gethostname', lambda: 'another-host')
    with pytest.raises(errors.InputError, match='in use by process'):
      with workdir_lock.WorkdirLock(str(workdir)):
        pass
  assert not (workdir / 'lock').exists()


def test_a_holder_whose_lock_was_taken_over_leaves_it(tmp_path, caplog):
  workdir = tmp_path / 'w'
  with workdir_lock.WorkdirLock(str(workdir), renew_secs=0.01):
    deadline = time.time() + HANG_SECS
    while not any('no longer' in r.getMessage() for r in caplog.records):
      assert time.time() < deadline, 'the holder did not notice'
      if _lock_of(workdir)['host'] != 'another-host':  # renewed meanwhile
        _another_hosts_lock(workdir, renewed=time.time())
      time.sleep(0.01)
  assert _lock_of(workdir)['host'] == 'another-host'


class _DamagedCheckpoints:
  """A CheckpointManager whose one step fails to restore as orbax fails on
  a truncated file: TensorStore's error wrapped in orbax's."""

  def __init__(self, directory):
    self.directory = directory

  def all_steps(self):
    return [4] if (self.directory / '4').exists() else []

  def restore(self, step, args):
    try:
      raise ValueError('OUT_OF_RANGE: Error reading "params.w/0" in OCDBT')
    except ValueError as e:
      raise Exception(
          'Encountered error while reading array index: (slice(0, 3, 1),). '
          'See full TensorStore details: <bound method pybind11_detail_'
          'function_record_v1.spec of TensorStore({\n  "base": ...'
      ) from e

  def reload(self):
    pass


def test_a_checkpoint_that_does_not_restore_is_named_by_its_cause(
    tmp_path, caplog
):
  directory = tmp_path / 'teacher'
  (directory / '4').mkdir(parents=True)
  mngr = _DamagedCheckpoints(directory)
  assert checkpoints.restore_latest(mngr, {}) is None
  (warning,) = [
      r.getMessage() for r in caplog.records if 'restore' in r.getMessage()
  ]
  assert 'ValueError: OUT_OF_RANGE: Error reading "params.w/0"' in warning
  assert 'bound method' not in warning and '\n' not in warning
  assert os.listdir(tmp_path / 'teacher.corrupt')[0].startswith('4-')
