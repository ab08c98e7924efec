"""The errors a user can act on, each reported in one line without a trace.

`InputError`: something the user gave (a config value, a flag, a path, a
file) or the state of the workdir (in use, another run's) stops the run
before it writes anything; the message says what to change. `main` prints it
as `error: <message>` and exits with status 2.

`RunStopped`: a run stopped part-way for a reason it cannot fix itself (the
training diverged, the disk is full or read-only); what it saved before is
intact, and the message says how to resume. Exit status 3.
"""


class InputError(ValueError):
  """A bad config value, flag, path or file; the message names the fix."""


class RunStopped(RuntimeError):
  """A run stopped part-way; the message says how to resume it."""
