"""Bad input (runs/config_checks.py, the workdir, the commands' flags and
arguments): each is refused in one line (`error: ...`, exit status 2)
before anything is written."""

import errno
import math
import os
import subprocess
import sys

import pytest

from configs import cifar10
from configs import test_guided
from diffusion_distillation import pipeline
from diffusion_distillation.data import input_pipeline
from diffusion_distillation.guided import pipeline as guided_pipeline
from diffusion_distillation.runs import workdir_lock
from diffusion_distillation.utils import cli
from diffusion_distillation.utils import errors
from tests.helpers import HANG_SECS
from tests.helpers import REPO
from tests.helpers import TEST_CONFIG
from tests.helpers import run_python
from tests.helpers import tiny_config
from tests.helpers import with_overrides

_LONG_NAME = 'a' * 300  # file systems allow 255 bytes per name


@pytest.mark.parametrize(
    'overrides,message',
    [
        ({'log_every_steps': 0}, 'log_every_steps=0: give at least 1'),
        ({'train.learning_rate': math.nan}, 'train.learning_rate=nan'),
        ({'train.learning_rate': -1.0}, 'train.learning_rate=-1.0'),
        ({'train.learning_rate': 0.0}, 'train.learning_rate=0.0'),
        ({'train.learning_rate': math.inf}, 'train.learning_rate=inf'),
        ({'distill.learning_rate': math.nan}, 'distill.learning_rate=nan'),
        ({'distill.learning_rate': -1e-4}, 'distill.learning_rate=-0.0001'),
        ({'train.ema_decay': 1.5}, r'train.ema_decay=1.5: .* \[0, 1\)'),
        ({'train.ema_decay': 1.0}, 'train.ema_decay=1.0'),
        ({'train.ema_decay': -0.1}, 'train.ema_decay=-0.1'),
        ({'distill.ema_decay': 1.0}, 'distill.ema_decay=1.0'),
        ({'model.dropout': 2.0}, r'model.dropout=2.0: .* \[0, 1\)'),
        ({'model.dropout': 1.0}, 'model.dropout=1.0'),
        ({'model.dropout': -0.5}, 'model.dropout=-0.5'),
        ({'model.dropout': math.nan}, 'model.dropout=nan'),
        ({'distill.dropout': 1.0}, 'distill.dropout=1.0'),
        ({'sample.num_samples': 0}, 'sample.num_samples=0: give at least 1'),
        ({'sample.num_samples': -3}, 'sample.num_samples=-3'),
        ({'eval.num_samples': 0}, 'eval.num_samples=0'),
        (
            {'distill.final_rounds_updates_multiplier': 0},
            'distill.final_rounds_updates_multiplier=0: give at least 1',
        ),
    ],
)
def test_bad_config_values_are_refused_before_any_write(
    tmp_path, overrides, message
):
  workdir = str(tmp_path / 'w')
  with pytest.raises(errors.InputError, match=message) as refused:
    pipeline.run_mode(tiny_config(**overrides), workdir, 'train')
  assert '\n' not in str(refused.value)
  assert not os.path.exists(workdir)


@pytest.mark.parametrize(
    'overrides,message',
    [
        ({'guide.learning_rate': math.nan}, 'guide.learning_rate=nan'),
        ({'guide.learning_rate': -1.0}, 'guide.learning_rate=-1.0'),
        ({'guide.ema_decay': 1.5}, 'guide.ema_decay=1.5'),
        ({'guide.dropout': 1.0}, 'guide.dropout=1.0'),
    ],
)
def test_bad_guide_values_are_refused_before_any_write(
    tmp_path, overrides, message
):
  workdir = str(tmp_path / 'w')
  config = with_overrides(test_guided.get_config(), **overrides)
  with pytest.raises(errors.InputError, match=message):
    guided_pipeline.run_mode(config, workdir, 'train')
  assert not os.path.exists(workdir)


@pytest.mark.parametrize(
    'workdir,message',
    [
        ('', '--workdir is empty'),
        ('  ', '--workdir is empty'),
        ('{tmp}/a_file/sub', 'is under {tmp}/a_file, a file'),
        ('{tmp}/a_file', 'is a file'),
        (f'{{tmp}}/{_LONG_NAME}/w', 'the name aaaa'),
        (f'{{tmp}}/w/{_LONG_NAME}', '300 bytes, longer than the 255'),
    ],
)
def test_workdirs_that_cannot_be_are_refused_before_any_write(
    tmp_path, workdir, message
):
  (tmp_path / 'a_file').write_text('mine')
  workdir = workdir.format(tmp=tmp_path)
  message = message.format(tmp=tmp_path)
  before = sorted(os.listdir(tmp_path))
  with pytest.raises(errors.InputError, match=message) as refused:
    workdir_lock.check_workdir(workdir)
  assert '\n' not in str(refused.value)
  if workdir.strip():  # an empty one would be the current directory
    with pytest.raises(errors.InputError, match=message):
      pipeline.run_mode(tiny_config(), workdir, 'train')
  assert sorted(os.listdir(tmp_path)) == before
  assert (tmp_path / 'a_file').read_text() == 'mine'


@pytest.mark.parametrize(
    'code,named',
    [
        (errno.EROFS, 'is on a read-only file system'),
        (errno.EACCES, 'is not writable'),
        (errno.ENOSPC, 'is on a full disk: the run cannot start (free space'),
    ],
)
def test_a_workdir_that_cannot_be_written_stops_a_new_run_as_bad_input(
    tmp_path, monkeypatch, capsys, code, named
):
  def refused_write(self, text):
    raise OSError(code, os.strerror(code), str(tmp_path / 'w' / 'lock'))

  monkeypatch.setattr(workdir_lock.WorkdirLock, '_create', refused_write)
  with pytest.raises(SystemExit) as exit_info, cli.one_line_errors():
    pipeline.run_mode(tiny_config(), str(tmp_path / 'w'), 'train')
  assert exit_info.value.code == cli.EXIT_BAD_INPUT
  (printed,) = capsys.readouterr().err.strip().splitlines()
  assert named in printed and 'resume' not in printed


def test_a_stray_argument_is_refused_in_one_line():
  cli.refuse_arguments(['main.py'])
  with pytest.raises(errors.InputError, match="Unexpected argument 'stray'"):
    cli.refuse_arguments(['main.py', 'stray'])


def test_unprepared_tfds_data_is_reported_without_tfds_warnings(
    tmp_path, caplog
):
  config = cifar10.get_config()
  config.dataset.data_dir = str(tmp_path / 'empty')
  with pytest.raises(errors.InputError, match='data.prepare cifar10'):
    input_pipeline.check_prepared(config.dataset)
  assert not [r for r in caplog.records if 'Variant folder' in r.getMessage()]


# Each command prints nothing but its one line: no log line before it, no
# usage text, no traceback.
@pytest.mark.slow
@pytest.mark.parametrize(
    'command,message',
    [
        (
            ['--config.log_every_steps=0', '--workdir={tmp}/w'],
            'log_every_steps=0',
        ),
        (['--workdir='], '--workdir is empty'),
        (['--workdir={tmp}/a_file/sub'], 'a file'),
        ([f'--workdir={{tmp}}/{_LONG_NAME}'], 'longer than the 255'),
        (['--workdir={tmp}/w', 'stray'], "Unexpected argument 'stray'"),
        (
            [
                f'--config={REPO}/configs/cifar10.py',
                '--config.dataset.data_dir={tmp}/empty',
                '--workdir={tmp}/w',
            ],
            'data.prepare cifar10',
        ),
        (
            [
                'release_import',
                '--config=configs/nope.py',
                '--checkpoint={tmp}/release',
                '--workdir={tmp}/w',
            ],
            '--config=configs/nope.py: no such file',
        ),
    ],
)
def test_the_commands_say_only_one_line(tmp_path, command, message):
  (tmp_path / 'a_file').write_text('mine')
  module = 'main'
  if command[0] == 'release_import':
    module, command = command[0], command[1:]
  if not any(arg.startswith('--config=') for arg in command):
    command = [f'--config={REPO}/configs/test.py'] + command
  command = [arg.format(tmp=tmp_path) for arg in command]
  # Not the repository: an empty --workdir would be the current directory.
  cwd = tmp_path / 'cwd'
  cwd.mkdir()
  result = subprocess.run(
      [sys.executable, '-m', f'diffusion_distillation.{module}'] + command,
      cwd=cwd,
      env=dict(os.environ, PYTHONPATH=REPO),
      capture_output=True,
      text=True,
      timeout=HANG_SECS,
  )
  assert result.returncode == 2, result.stderr[-3000:]
  (line,) = result.stderr.strip().splitlines()
  assert line.startswith('error: ') and message in line
  assert sorted(os.listdir(tmp_path)) == ['a_file', 'cwd']
  assert os.listdir(cwd) == []


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
