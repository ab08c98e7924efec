"""One writer per workdir: a lock file that names its holder, on a lease.

<workdir>/lock holds the host, process id and start time of the run that
writes there, and when the run last renewed it. A second run on the same
workdir stops with one line naming the holder. A lock goes stale, and is
taken over with a warning, when

- its holder is on this host and its process is gone (e.g. after SIGKILL);
- its holder is on another host and has not renewed it for `lease_secs`: a
  running holder renews it every `renew_secs` from a background thread, so
  a lock left by a host that died or was preempted frees the workdir for a
  replacement host sharing it (gs://) once the lease ends. The hosts' clocks
  must agree to well within the lease;
- it cannot be read (empty, e.g. left by a write that failed when the disk
  was full) and is older than a few seconds, longer than any write takes.

The lock is written whole: a temporary file is written, then linked into
place, which fails if a lock exists; renewals replace it by a rename. In a
multi-process run, process 0 takes the lock for all and tells the others
whether it got it. On gs:// a file cannot be created exclusively: two runs
started within moments of each other may both pass; one started later is
refused. Two runs that take over the same stale lock at the same moment
may likewise both pass.
"""

import errno
import json
import os
import socket
import threading
import time
import uuid

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from diffusion_distillation.utils import errors
from diffusion_distillation.utils import files

# Preemptible VMs get ~30 s notice and a replacement starts within minutes:
# a lease of minutes frees the workdir soon after, while a renewal a minute
# can be missed a few times (a slow disk, a busy host) without losing it.
LEASE_SECS = 300.0
RENEW_SECS = 60.0
# A lock that cannot be read may be being written (an old version of this
# module, or gs://, where the write is not atomic) for at most this long.
UNREADABLE_GRACE_SECS = 10.0

# The tokens of the locks this process holds: a lock naming this process
# but none of them was left by an earlier process with the same id.
_HELD_HERE = set()

# What an OSError at the first write to a workdir says about it.
_UNWRITABLE = {
    errno.EROFS: 'is on a read-only file system',
    errno.EACCES: 'is not writable (permission denied)',
    errno.EPERM: 'is not writable (operation not permitted)',
    errno.ENOSPC: 'is on a full disk',
    errno.EDQUOT: 'is over its disk quota',
}


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # someone else's live process
    return True
  return True


def check_workdir(workdir: str):
  """Raises InputError when `workdir` cannot be a run's directory: empty, a
  name longer than the file system allows, or under a file. Writes nothing;
  whether it is writable shows at its first write (the lock)."""
  if not workdir or not workdir.strip():
    raise errors.InputError(
        '--workdir is empty: give a directory for the run (a new one, or '
        "a run's to resume it)."
    )
  if '://' in workdir:
    return
  path = os.path.abspath(workdir)
  existing = path
  while not os.path.lexists(existing):
    existing = os.path.dirname(existing)
  try:
    name_max = os.pathconf(existing, 'PC_NAME_MAX')
  except (OSError, ValueError):
    name_max = 255
  for name in path.split(os.sep):
    if len(os.fsencode(name)) > name_max:
      raise errors.InputError(
          f'--workdir={workdir}: the name {name[:20]}... is '
          f'{len(os.fsencode(name))} bytes, longer than the {name_max} the '
          'file system allows; shorten it.'
      )
  if not os.path.isdir(existing):
    what = 'is a file' if existing == path else f'is under {existing}, a file'
    raise errors.InputError(
        f"--workdir={workdir} {what}; give a directory (new or a run's)."
    )


class WorkdirLock:
  """`with WorkdirLock(workdir):` holds <workdir>/lock for the block.

  Raises InputError on entry when another run holds it, or when the workdir
  cannot be written (read-only, a full disk).
  """

  def __init__(
      self,
      workdir: str,
      *,
      lease_secs: float = LEASE_SECS,
      renew_secs: float = RENEW_SECS,
  ):
    self._workdir = workdir
    self._path = files.as_path(workdir) / 'lock'
    self._lease_secs = lease_secs
    self._renew_secs = renew_secs
    self._host = socket.gethostname()
    self._token = uuid.uuid4().hex  # tells this run's lock from any other
    self._started = ''
    self._held = False
    self._released = threading.Event()
    self._renewer = None

  def __enter__(self):
    refusal = self._acquire() if jax.process_index() == 0 else ''
    if jax.process_count() > 1:
      refused = multihost_utils.broadcast_one_to_all(np.int32(bool(refusal)))
      if refused and not refusal:
        refusal = f'{self._workdir} is in use by another run (see process 0).'
    if refusal:
      raise errors.InputError(refusal)
    if self._held:
      self._renewer = threading.Thread(
          target=self._renew_until_released,
          name=f'renew {self._path}',
          daemon=True,  # a process that dies leaves the lease to run out
      )
      self._renewer.start()
    return self

  def __exit__(self, *exc_info):
    if not self._held:
      return
    self._released.set()
    # Not longer: a stopped run has seconds to exit (SIGTERM), and a
    # renewal stuck on a hung file system must not hold it up.
    self._renewer.join(timeout=10)
    self._held = False
    _HELD_HERE.discard(self._token)
    try:
      if self._holds_it():
        self._path.unlink()
    except OSError:  # e.g. the disk went read-only: the lock goes stale
      pass

  def _content(self) -> str:
    return json.dumps({
        'host': self._host,
        'pid': os.getpid(),
        'started': self._started,
        'renewed': time.time(),
        'lease_secs': self._lease_secs,
        'token': self._token,
    })

  def _acquire(self) -> str:
    """Takes the lock; returns '' or the one-line refusal."""
    self._started = time.strftime('%Y-%m-%d %H:%M:%S %Z')
    try:
      check_workdir(self._workdir)
      self._path.parent.mkdir(parents=True, exist_ok=True)
      # A third try after a stale lock was taken over and another run took
      # the workdir in between, or after waiting out an unreadable lock.
      for _ in range(3):
        if self._create(self._content()):
          self._held = True
          _HELD_HERE.add(self._token)
          return ''
        text, modified = self._read()
        if text is None:  # released right now
          continue
        holder = _parse(text)
        age = time.time() - modified
        if holder is None and age < UNREADABLE_GRACE_SECS:
          time.sleep(UNREADABLE_GRACE_SECS - age)
          continue
        reason = self._stale(holder, modified)
        if not reason:
          return self._refusal(holder, modified)
        logging.warning('Taking over %s: %s.', self._path, reason)
        if self._read()[0] == text:  # not replaced meanwhile
          self._path.unlink(missing_ok=True)
    except errors.InputError as e:
      return str(e)
    except OSError as e:
      return self._unwritable(e)
    return f'Could not take {self._path}; remove it if no run uses it.'

  def _unwritable(self, error: OSError) -> str:
    problem = _UNWRITABLE.get(error.errno)
    if problem is None:
      return f'--workdir={self._workdir}: cannot write {self._path}: {error}.'
    fix = (
        'free space and rerun'
        if error.errno in (errno.ENOSPC, errno.EDQUOT)
        else 'give a directory this user can write, or make it writable'
    )
    return f'--workdir={self._workdir} {problem}: the run cannot start ({fix}).'

  def _stale(self, holder, modified: float) -> str:
    """Why the lock of `holder` (None: unreadable) is stale, or ''."""
    if holder is None:
      return 'it cannot be read (empty or damaged)'
    host, pid = holder.get('host'), holder.get('pid')
    if host == self._host:
      if not isinstance(pid, int):
        return ''
      if pid == os.getpid() and holder.get('token') not in _HELD_HERE:
        # E.g. a restarted container: its process ids start over.
        return f'its process {pid} on this host was an earlier one'
      if not _alive(pid):
        return f'its process {pid} on this host is gone'
      return ''
    renewed, lease = self._lease(holder, modified)
    silent = time.time() - renewed
    if silent <= lease:
      return ''
    return (
        f'process {pid} on {host} has not renewed it for {silent:.0f} s, '
        f'past its lease of {lease:.0f} s'
    )

  def _refusal(self, holder, modified: float) -> str:
    holder = holder or {}
    if holder.get('host', self._host) == self._host:
      gone = f'if that process is gone, remove {self._path}'
    else:
      ends = sum(self._lease(holder, modified))
      gone = (
          'if that process is gone, rerun after its lease ends at '
          f'{time.strftime("%H:%M:%S %Z", time.localtime(ends))}'
      )
    return (
        f'{self._workdir} is in use by process {holder.get("pid", "?")} on '
        f'{holder.get("host", "?")} since {holder.get("started", "?")}: '
        f'wait for it to finish, or use another --workdir ({gone}).'
    )

  def _lease(self, holder: dict, modified: float) -> tuple:
    """(when `holder` last renewed its lock, its lease in seconds); a lock
    of a version without leases renewed it when it was written."""
    renewed = holder.get('renewed')
    lease = holder.get('lease_secs')
    number = (int, float)
    return (
        renewed if isinstance(renewed, number) else modified,
        lease if isinstance(lease, number) else self._lease_secs,
    )

  def _read(self) -> tuple:
    """(text, modification time) of the lock; (None, 0) when it is gone."""
    try:
      return self._path.read_text(), self._path.stat().mtime
    except FileNotFoundError:  # released or taken over right now
      return None, 0.0

  def _holds_it(self) -> bool:
    holder = _parse(self._read()[0])
    return holder is not None and holder.get('token') == self._token

  def _create(self, text: str) -> bool:
    """Creates the lock holding `text`, exclusively; False when it exists."""
    if '://' in str(self._path):
      if self._path.exists():
        return False
      self._path.write_text(text)
      return True
    whole = self._path.parent / f'.lock.{self._token}.tmp'
    try:
      whole.write_text(text)
      try:
        os.link(str(whole), str(self._path))  # fails if it exists
      except FileExistsError:
        return False
      except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.ENOSYS):
          raise
        return self._create_without_links(text)
      return True
    finally:
      whole.unlink(missing_ok=True)

  def _create_without_links(self, text: str) -> bool:
    """O_EXCL, where the file system has no hard links (some FUSE ones):
    a process killed between creating and writing leaves an empty lock,
    which goes stale after UNREADABLE_GRACE_SECS."""
    try:
      fd = os.open(str(self._path), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
      return False
    try:
      with os.fdopen(fd, 'w') as f:
        f.write(text)
    except OSError:
      self._path.unlink(missing_ok=True)
      raise
    return True

  def _renew_until_released(self):
    warned = False
    while not self._released.wait(self._renew_secs):
      try:
        if not self._holds_it():
          logging.error(
              "%s is no longer this run's: it was removed, or taken over "
              'by another run when this one did not renew it within its '
              'lease of %.0f s; two runs may now write %s.',
              self._path,
              self._lease_secs,
              self._workdir,
          )
          return
        if self._released.is_set():  # released while this one read
          return
        files.write_atomically(self._path, self._content())
        warned = False
      except OSError as e:  # a full or flaky disk: try again next time
        if not warned:
          logging.warning('Could not renew %s: %s', self._path, e)
          warned = True


def _parse(text):
  """The holder a lock's text (None: no lock) names, or None when it cannot
  be read."""
  if text is None:
    return None
  try:
    holder = json.loads(text)
  except ValueError:
    return None
  return holder if isinstance(holder, dict) else None
