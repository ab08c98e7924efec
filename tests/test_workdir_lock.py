"""runs/workdir_lock.py: one writer per workdir. The lock is written whole,
names its holder, is taken over when stale (a dead process, unreadable, or
another host's lease run out) and renewed while its holder runs."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from diffusion_distillation import pipeline
from diffusion_distillation.runs import workdir as workdir_lib
from diffusion_distillation.runs import workdir_lock
from diffusion_distillation.utils import errors
from tests.helpers import HANG_SECS
from tests.helpers import SHORT_TEACHER
from tests.helpers import files_under
from tests.helpers import tiny_config


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
    before = files_under(workdir)
    with pytest.raises(errors.InputError) as refused:
      pipeline.run_mode(tiny_config(**SHORT_TEACHER), str(workdir), 'train')
    assert f'in use by process {holder.pid}' in str(refused.value)
    assert '\n' not in str(refused.value)
    assert files_under(workdir) == before
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
  pipeline.run_mode(tiny_config(**SHORT_TEACHER), str(workdir), 'train')
  assert any('Taking over' in r.getMessage() for r in caplog.records)
  assert not (workdir / 'lock').exists()  # released at the end
  assert workdir_lib.saved_models(str(workdir)) == [0]


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
