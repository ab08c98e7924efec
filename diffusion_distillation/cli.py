"""What the project's commands share: a quiet start, and one-line errors.

Exit statuses of `main` and `release_import`:
  0  done;
  2  bad input (a config value, flag, path or file): one line, `error: ...`,
     saying what to change; nothing was written.
"""

import contextlib
import logging as logging_lib
import os
import sys
import tempfile

from absl import logging

from diffusion_distillation import errors

EXIT_BAD_INPUT = 2


class _QuietLibraries(logging_lib.Filter):
  """Drops INFO chatter of orbax, TensorFlow and JAX; warnings still show."""

  def filter(self, record):
    noisy = any(
        f'/{name}/' in record.pathname
        for name in ('orbax', 'tensorflow', 'jax')
    )
    return record.levelno >= logging_lib.WARNING or not noisy


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


def quiet_start():
  """Imports TensorFlow without the INFO lines its C++ core prints at load
  time (oneDNN, CPU instructions), which no environment variable silences
  in TF 2.21; and hides the INFO logs of orbax, TensorFlow and JAX."""
  with _stderr_held_back():
    import tensorflow  # noqa: F401
  logging.get_absl_handler().addFilter(_QuietLibraries())


def exit_on_bad_input(error: errors.InputError):
  """Ends the command with the error's one line and status 2."""
  print(f'error: {error}', file=sys.stderr)
  sys.exit(EXIT_BAD_INPUT)
