"""Stopping cleanly on SIGTERM or SIGINT (preemption, a scheduler, Ctrl-C).

Cloud TPU spot VMs and batch schedulers send SIGTERM and kill the process
about 30 s later. While `handled()` is active (the command installs it), a
signal never kills the run part-way through a write:

- inside a training loop (`deferred()`), the first signal is only recorded:
  the loop finishes the dispatch in flight, checks `requested()`, saves a
  checkpoint and raises `Stopped`; a second signal abandons the dispatch
  (the run resumes from the last checkpoint);
- anywhere else (restoring, compiling outside a loop, sampling, evaluating)
  the signal raises `Stopped` at once: nothing there is half-written,
  because every write is atomic;
- inside a write (`shielded()`: a checkpoint, a file) every signal waits
  for the write to finish.

The processes of a multi-process run (--distributed) must stop at the same
step: there the command leaves SIGTERM to JAX's preemption service, and the
loop asks `requested(step)`, which it answers for all processes alike.

Once `Stopped` is raised, further signals are ignored, so that unwinding
(the workdir lock's release, the writer's flush) is not cut short. `Stopped`
is a BaseException, as KeyboardInterrupt is, so that no `except Exception`
(a restore that falls back to an older checkpoint) mistakes it for a
failure. The command prints its one line and exits with 128 + the signal's
number (143 for SIGTERM, 130 for SIGINT), as a shell reports a process the
signal ended: rerunning the same command resumes.
"""

import contextlib
import signal
import threading

import jax
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(BaseException):
  """The run stopped on a signal; rerunning the same command resumes."""

  def __init__(self, signum: int, where: str = ''):
    self.signum = signum
    self.where = where
    super().__init__(self.message)

  @property
  def exit_status(self) -> int:
    return 128 + self.signum

  @property
  def message(self) -> str:
    where = f' {self.where}' if self.where else ''
    return (
        f'stopped by {signal.Signals(self.signum).name}{where}; rerun the '
        'same command to resume'
    )


class _State:
  """What the handler knows: the first signal, and where the run is."""

  signum = None  # the first signal received, while handled() is active
  deferring = 0  # depth of deferred() blocks
  shielding = 0  # depth of shielded() blocks
  stopping = False  # Stopped was raised: ignore further signals


def _handler(signum, frame):
  del frame  # unused
  first = _State.signum is None
  if first:
    _State.signum = signum
  if _State.stopping or _State.shielding:
    return
  if _State.deferring and first:
    return
  _raise_stopped(signum, '' if first else '(a second signal: not saved)')


def _raise_stopped(signum: int, where: str):
  _State.stopping = True
  raise Stopped(signum, where)


@contextlib.contextmanager
def handled():
  """Installs the SIGTERM and SIGINT handlers for the block (the main
  thread only; elsewhere the block runs without them)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  previous = {s: signal.signal(s, _handler) for s in SIGNALS}
  _State.signum, _State.stopping = None, False
  try:
    yield
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
    _State.signum, _State.stopping = None, False


def requested(step: int | None = None) -> bool:
  """Whether a signal asks the run to stop, checked between dispatches.

  In a multi-process run, `step` (the same on every process at each call,
  one more at each) is where the processes agree to stop: JAX's preemption
  service (on with jax.distributed) takes SIGTERM on any process and makes
  this True on all of them at the same step, so that they save together.
  """
  if step is not None and jax.process_count() > 1:
    if multihost_utils.reached_preemption_sync_point(step):
      _State.signum = signal.SIGTERM
      return True
    return False
  return _State.signum is not None and not _State.stopping


def stop(where: str):
  """Raises Stopped for the signal received; `where` says where, e.g.
  'at train step 6, saved as W/teacher/6'."""
  _raise_stopped(_State.signum, where)


@contextlib.contextmanager
def deferred():
  """A training loop: the first signal only sets `requested()`; the loop
  saves and calls `stop`. A signal still pending when the block ends (it
  came after the loop's last check) stops the run there."""
  _State.deferring += 1
  try:
    yield
  finally:
    _State.deferring -= 1
  _stop_if_pending()


@contextlib.contextmanager
def shielded():
  """A write that a signal must not cut short; a signal that came during
  it takes effect after it (outside a deferred() block)."""
  _State.shielding += 1
  try:
    yield
  finally:
    _State.shielding -= 1
  if not _State.deferring:
    _stop_if_pending()


def _stop_if_pending():
  if requested() and not _State.shielding and not _State.deferring:
    _raise_stopped(_State.signum, '')
