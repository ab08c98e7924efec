"""SIGTERM and SIGINT: a signal stops the run at a safe point, never inside a
write; the command says so in one line and exits with 128 + the signal."""

import os
import signal

import pytest

from diffusion_distillation.utils import cli
from diffusion_distillation.utils import preemption


def _send(signum):
  os.kill(os.getpid(), signum)


@pytest.mark.parametrize(
    'signum,status', [(signal.SIGTERM, 143), (signal.SIGINT, 130)]
)
def test_outside_a_loop_a_signal_stops_at_once(signum, status):
  with pytest.raises(preemption.Stopped) as stopped, preemption.handled():
    _send(signum)
    pytest.fail('the signal did not stop the block')
  assert stopped.value.exit_status == status
  assert stopped.value.message == (
      f'stopped by {signum.name}; rerun the same command to resume'
  )


def test_in_a_loop_the_first_signal_waits_for_the_loops_check():
  with pytest.raises(preemption.Stopped) as stopped, preemption.handled():
    with preemption.deferred():
      assert not preemption.requested()
      _send(signal.SIGTERM)
      assert preemption.requested()  # the loop saves, then stops
      preemption.stop('at train step 6, saved as w/teacher/6')
  assert str(stopped.value) == (
      'stopped by SIGTERM at train step 6, saved as w/teacher/6; rerun the '
      'same command to resume'
  )


def test_in_a_loop_a_second_signal_abandons_the_dispatch():
  with pytest.raises(preemption.Stopped) as stopped, preemption.handled():
    with preemption.deferred():
      _send(signal.SIGINT)
      _send(signal.SIGINT)
      pytest.fail('the second signal did not stop the loop')
  assert 'second signal: not saved' in stopped.value.message


def test_a_signal_after_the_loops_last_check_stops_when_it_ends():
  with pytest.raises(preemption.Stopped), preemption.handled():
    with preemption.deferred():
      _send(signal.SIGTERM)
    pytest.fail('the pending signal was lost')


def test_signals_during_a_write_wait_for_it_to_finish(tmp_path):
  path = tmp_path / 'file'
  finished = []
  with pytest.raises(preemption.Stopped), preemption.handled():
    with preemption.shielded():
      _send(signal.SIGTERM)
      _send(signal.SIGTERM)  # a second one does not abort the write either
      path.write_text('whole')
      finished.append(True)
  assert finished and path.read_text() == 'whole'


def test_a_save_in_a_loop_finishes_and_the_loop_stops_after_it():
  with pytest.raises(preemption.Stopped), preemption.handled():
    with preemption.deferred():
      with preemption.shielded():
        _send(signal.SIGTERM)
        _send(signal.SIGTERM)
      assert preemption.requested()
      preemption.stop('at train step 2, saved as w/teacher/2')


def test_signals_while_stopping_are_ignored():
  cleaned = []
  with pytest.raises(preemption.Stopped), preemption.handled():
    try:
      _send(signal.SIGTERM)
    finally:
      _send(signal.SIGTERM)  # e.g. during the lock's release
      cleaned.append(True)
  assert cleaned


def test_handlers_are_restored_and_nothing_is_pending_after():
  before = signal.getsignal(signal.SIGTERM)
  with pytest.raises(preemption.Stopped), preemption.handled():
    _send(signal.SIGTERM)
  assert signal.getsignal(signal.SIGTERM) is before
  assert not preemption.requested()


@pytest.mark.parametrize(
    'raised,status,line',
    [
        (
            preemption.Stopped(signal.SIGTERM, 'at train step 4, saved as x'),
            143,
            (
                'stopped by SIGTERM at train step 4, saved as x; rerun the same'
                ' command to resume\n'
            ),
        ),
        (
            KeyboardInterrupt(),
            130,
            'stopped by SIGINT; rerun the same command to resume\n',
        ),
    ],
)
def test_the_command_prints_one_line_and_exits_128_plus_the_signal(
    capsys, raised, status, line
):
  with pytest.raises(SystemExit) as exit_info, cli.one_line_errors():
    raise raised
  assert exit_info.value.code == status
  assert capsys.readouterr().err == line
