"""Command line: train a teacher, distill it, sample from the results.

  python -m diffusion_distillation.main --config=configs/digits.py \
      --workdir=workdirs/digits --mode=all

Re-running the same command with the same workdir resumes where it stopped.
"""

import logging as logging_lib
import sys

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from diffusion_distillation import config_checks
from diffusion_distillation import pipeline

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file in configs/.', lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory for checkpoints, samples and logs; re-use it '
    'to resume.')
_MODE = flags.DEFINE_string(
    'mode', 'all', f'One of {", ".join(pipeline.MODES)}.')
flags.mark_flags_as_required(['config', 'workdir'])


class _QuietLibraries(logging_lib.Filter):
  """Drops INFO chatter of orbax and TensorFlow; warnings still show."""

  def filter(self, record):
    noisy = any(f'/{name}/' in record.pathname
                for name in ('orbax', 'tensorflow', 'jax'))
    return record.levelno >= logging_lib.WARNING or not noisy


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietLibraries())
  logging.info('JAX process %d/%d, local devices: %s', jax.process_index(),
               jax.process_count(), jax.local_devices())
  try:
    pipeline.run_mode(_CONFIG.value, _WORKDIR.value, _MODE.value)
  except config_checks.ConfigError as e:
    # A bad input: one line saying what to change, no traceback.
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main)
