"""The errors a user can act on, each reported in one line without a trace.

`InputError`: something the user gave (a config value, a flag, a path, a
file) cannot work; the message says what to change. `main` prints it as
`error: <message>` and exits with status 2.
"""


class InputError(ValueError):
  """A bad config value, flag, path or file; the message names the fix."""
