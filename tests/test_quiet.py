"""utils/quiet.py: what the commands hide of the libraries (closed-event-
loop and aborted-read echoes, INFO chatter by logger or package) and what
they keep (every other error, the project's own progress)."""

import errno
import logging
import os
import sys

import orbax.checkpoint as ocp
import pytest

from diffusion_distillation.utils import cli
from diffusion_distillation.utils import quiet


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
