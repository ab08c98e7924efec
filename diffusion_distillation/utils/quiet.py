"""What the commands hide of the libraries' output, in one place.

A command shows its own progress, every warning and error, and one line
for a failure it reports itself (cli.py). It hides:

  - the INFO chatter of JAX and TensorFlow, told apart by their loggers
    ('jax.*', 'tensorflow'), and of orbax and TFDS, which log through
    absl's logger and so are told apart by the package that logged;
  - the tracebacks orbax's writer threads log for an error the command
    reports in one line (a full or read-only disk);
  - the INFO lines TensorFlow's C++ core prints when it loads (oneDNN, CPU
    instructions), which no environment variable silences in TF 2.21;
  - the echoes of a failed checkpoint write or read (`Echoes`).
"""

import contextlib
import importlib.util
import logging
import os
import sys
import tempfile
from collections.abc import Callable

from absl import logging as absl_logging

# The libraries whose INFO and lower records are hidden. JAX and TensorFlow
# log to loggers named after them; orbax and TFDS mostly through absl's.
_LIBRARIES = ('jax', 'tensorflow', 'orbax', 'tensorflow_datasets')
_ABSL_LOGGING_PACKAGES = ('orbax', 'tensorflow_datasets')


def _package_folders(names) -> tuple:
  """The installed folders of the packages `names` (those installed)."""
  folders = []
  for name in names:
    spec = importlib.util.find_spec(name)
    if spec and spec.submodule_search_locations:
      folders += [
          os.path.join(folder, '') for folder in spec.submodule_search_locations
      ]
  return tuple(folders)


class _LibraryChatter(logging.Filter):
  """Drops the libraries' records below WARNING, and their tracebacks of
  an error that `reported` recognises (the command reports it in one
  line)."""

  def __init__(self, reported: Callable[[BaseException], object]):
    super().__init__()
    self._reported = reported
    self._absl_packages = _package_folders(_ABSL_LOGGING_PACKAGES)

  def _from_library(self, record) -> bool:
    if record.name.split('.')[0] in _LIBRARIES:
      return True
    return record.name == 'absl' and record.pathname.startswith(
        self._absl_packages
    )

  def filter(self, record):
    if not self._from_library(record):
      return True
    if record.exc_info and self._reported(record.exc_info[1]):
      return False
    return record.levelno >= logging.WARNING


@contextlib.contextmanager
def _stderr_held_back():
  """Holds back what C++ code writes to stderr (fd 2) inside the block, and
  lets it through only if the block raises."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as held:
    os.dup2(held.fileno(), 2)
    try:
      yield
    except BaseException:
      os.dup2(saved, 2)
      held.seek(0)
      os.write(2, held.read())
      raise
    finally:
      os.dup2(saved, 2)
      os.close(saved)


# ----------------------------------------------------------------------------
# Echoes: exceptions that repeat a failure already reported, dozens or
# hundreds of times, through sys.unraisablehook (C++ threads, objects being
# collected) and sys.excepthook.


class Echoes:
  """Exceptions whose text holds one of `texts`, dropped while installed.

  One pair of hooks serves every group: while any group is installed,
  sys.unraisablehook (and, for groups with `uncaught`, sys.excepthook)
  drop its echoes and pass every other exception to the hook that was
  there before.
  """

  def __init__(self, *texts: str, uncaught: bool = False):
    self.texts = texts
    self.uncaught = uncaught
    self.installed = False
    self.kept = False

  def matches(self, error) -> bool:
    return self.installed and any(text in str(error) for text in self.texts)

  def install(self):
    self.installed = True
    _hooks.wrap()

  def keep(self):
    """Stays installed for good: its echoes may come much later."""
    self.kept = True

  def uninstall_unless_kept(self):
    if self.kept or not self.installed:
      return
    self.installed = False
    _hooks.unwrap_if_idle()


_CLOSED_LOOP = 'Event loop is closed'

# When a checkpoint write or read fails, orbax's asyncio loop closes while
# TensorStore callbacks still post to it: each prints this traceback (from
# Python threads through sys.excepthook, from TensorStore's C++ threads
# through sys.unraisablehook).
CLOSED_EVENT_LOOP = Echoes(_CLOSED_LOOP, uncaught=True)

# What orbax's aborted reads of a checkpoint that failed to restore report
# afterwards through sys.unraisablehook (hundreds of multi-line tracebacks,
# possibly during later, unrelated code): TensorStore callbacks posting to
# orbax's closed event loop, and read coroutines closed by the collector,
# awaited or not.
ABORTED_READS = Echoes(
    _CLOSED_LOOP,
    'Encountered error while reading array index',
    "coroutine '_read_array_index_and_device_put' was never awaited",
)

_GROUPS = (CLOSED_EVENT_LOOP, ABORTED_READS)


class _Hooks:
  """The one sys.unraisablehook and sys.excepthook that drop echoes."""

  def __init__(self):
    self.previous = None  # (unraisablehook, excepthook) while wrapped

  def unraisable(self, unraisable):
    if not any(group.matches(unraisable.exc_value) for group in _GROUPS):
      self.previous[0](unraisable)

  def uncaught(self, kind, error, trace):
    if not any(g.uncaught and g.matches(error) for g in _GROUPS):
      self.previous[1](kind, error, trace)

  def wrap(self):
    if self.previous is None:
      self.previous = sys.unraisablehook, sys.excepthook
      sys.unraisablehook, sys.excepthook = self.unraisable, self.uncaught

  def unwrap_if_idle(self):
    if self.previous is None or any(group.installed for group in _GROUPS):
      return
    # Only the hooks nobody wrapped since are put back.
    if sys.unraisablehook == self.unraisable:
      sys.unraisablehook = self.previous[0]
    if sys.excepthook == self.uncaught:
      sys.excepthook = self.previous[1]
    self.previous = None


_hooks = _Hooks()


def quiet_libraries(reported: Callable[[BaseException], object]):
  """Imports TensorFlow with its load-time lines held back; hides the
  libraries' INFO logs and their tracebacks of errors that `reported`
  recognises; drops the closed-event-loop echoes for good."""
  with _stderr_held_back():
    import tensorflow  # noqa: F401
  absl_logging.get_absl_handler().addFilter(_LibraryChatter(reported))
  CLOSED_EVENT_LOOP.install()
  CLOSED_EVENT_LOOP.keep()
