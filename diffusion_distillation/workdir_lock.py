"""One writer per workdir: a lock file that names its holder.

<workdir>/lock holds the host, process id and start time of the run that
writes there. A second run on the same workdir stops with one line naming
the holder. A lock whose process is gone (a dead process id on this host,
e.g. after SIGKILL) is taken over with a warning. In a multi-process run,
process 0 takes the lock for all and tells the others whether it got it.
On gs:// the file cannot be created exclusively: two runs started within
moments of each other may both pass; one started later is refused.
"""

import errno
import json
import os
import socket
import time

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from diffusion_distillation import errors
from diffusion_distillation import files


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # someone else's live process
    return True
  return True


class WorkdirLock:
  """`with WorkdirLock(workdir):` holds <workdir>/lock for the block."""

  def __init__(self, workdir: str):
    self._workdir = workdir
    self._path = files.as_path(workdir) / 'lock'
    self._held = False

  def __enter__(self):
    refusal = self._acquire() if jax.process_index() == 0 else ''
    if jax.process_count() > 1:
      refused = multihost_utils.broadcast_one_to_all(np.int32(bool(refusal)))
      if refused and not refusal:
        refusal = f'{self._workdir} is in use by another run (see process 0).'
    if refusal:
      raise errors.InputError(refusal)
    return self

  def __exit__(self, *exc_info):
    if self._held:
      try:
        self._path.unlink()
      except OSError:  # e.g. the disk went read-only: the pid goes stale
        pass
      self._held = False

  def _acquire(self) -> str:
    """Takes the lock; returns '' or the one-line refusal."""
    me = {
        'host': socket.gethostname(),
        'pid': os.getpid(),
        'started': time.strftime('%Y-%m-%d %H:%M:%S %Z'),
    }
    self._path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):  # a second try after taking over a stale lock
      if self._create(json.dumps(me)):
        self._held = True
        return ''
      try:
        holder = json.loads(self._path.read_text())
      except (OSError, ValueError):  # being written or removed right now
        holder = {}
      same_host = holder.get('host') == me['host']
      if (
          same_host
          and isinstance(holder.get('pid'), int)
          and not _alive(holder['pid'])
      ):
        logging.warning(
            'Taking over %s: its process %d on this host is gone.',
            self._path,
            holder['pid'],
        )
        self._path.unlink(missing_ok=True)
        continue
      return (
          f'{self._workdir} is in use by process {holder.get("pid", "?")} on '
          f'{holder.get("host", "?")} since {holder.get("started", "?")}: '
          'wait for it to finish, or use another --workdir (if that process '
          f'is gone, remove {self._path}).'
      )
    return f'Could not take {self._path}; remove it if no run uses it.'

  def _create(self, text: str) -> bool:
    """Creates the lock file exclusively; False when it exists."""
    if '://' in str(self._path):
      if self._path.exists():
        return False
      self._path.write_text(text)
      return True
    try:
      fd = os.open(str(self._path), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except OSError as e:
      if e.errno == errno.EEXIST:
        return False
      raise
    with os.fdopen(fd, 'w') as f:
      f.write(text)
    return True
