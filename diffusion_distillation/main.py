"""Command line: train a teacher, distill it, sample from the results.

  python -m diffusion_distillation.main --config=configs/digits.py \
      --workdir=workdirs/digits --mode=all

Re-running the same command with the same workdir resumes where it stopped.
A guided config (one with a guidance section) runs with the guided wing's
modes and phases (diffusion_distillation/guided), every other config with
the core pipeline's.
On several hosts, run the same command on every host with --distributed (and
a workdir that all hosts share, e.g. gs://); see launch/.
"""

import contextlib
import sys

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from diffusion_distillation import network as network_lib
from diffusion_distillation import pipeline
from diffusion_distillation.guided import pipeline as guided_pipeline
from diffusion_distillation.runs import workdir_lock
from diffusion_distillation.utils import cli
from diffusion_distillation.utils import errors
from diffusion_distillation.utils import preemption

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file in configs/.', lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    'workdir',
    None,
    'Directory for checkpoints, samples and logs; re-use it to resume.',
)
_MODE = flags.DEFINE_string(
    'mode',
    'all',
    f'One of {", ".join(pipeline.MODES)}; with a guided config also '
    f'{", ".join(guided_pipeline.MODES.keys() - pipeline.MODES.keys())} '
    '(stage one, between train and distill).',
)
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed',
    False,
    'Connect the processes of a multi-process run with '
    'jax.distributed.initialize(). On Cloud TPU VMs (and SLURM, Open MPI) JAX '
    'finds the other processes itself; elsewhere give the three flags below.',
)
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    'coordinator_address',
    None,
    'host:port of process 0 (with '
    '--distributed); default: detected, or $JAX_COORDINATOR_ADDRESS.',
)
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'Number of processes (with --distributed).'
)
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, 'This process, 0..num_processes-1 (with --distributed).'
)
_CPU_DEVICES = flags.DEFINE_integer(
    'cpu_devices',
    None,
    'When JAX runs on the CPU, split its cores into this many data-parallel '
    'devices (default: 2 with two cores or more; 1 with --distributed). '
    'Ignored on GPU and TPU.',
)
flags.mark_flags_as_required(['config', 'workdir'])


def _initialize_distributed():
  """Joins the other processes; must run before anything touches devices."""
  explicit = (
      _COORDINATOR_ADDRESS.value,
      _NUM_PROCESSES.value,
      _PROCESS_ID.value,
  )
  if not _DISTRIBUTED.value:
    if any(v is not None for v in explicit):
      raise errors.InputError(
          '--coordinator_address, --num_processes and '
          '--process_id need --distributed.'
      )
    return
  # CPU processes need gloo for collectives across processes. The setting
  # only concerns the CPU client, so it is harmless on TPU and GPU (whose
  # backend cannot be asked before initialize).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(*explicit)


def run_mode(config, workdir: str, mode: str) -> dict:
  """Runs `mode` with the config's wing: a guided config, or a mode only
  the guided wing has (which refuses an unguided config), with the guided
  wing's; any other with the core pipeline's."""
  guided_only = guided_pipeline.MODES.keys() - pipeline.MODES.keys()
  if network_lib.is_guided(config) or mode in guided_only:
    return guided_pipeline.run_mode(config, workdir, mode)
  return pipeline.run_mode(config, workdir, mode)


def main(argv):
  # The processes of a --distributed run would have to agree on the step to
  # stop at; until they do, a signal ends them as it did (see
  # utils/preemption.py).
  signals = (
      contextlib.nullcontext() if _DISTRIBUTED.value else preemption.handled()
  )
  with cli.one_line_errors(), signals:
    cli.refuse_arguments(argv)
    workdir_lock.check_workdir(_WORKDIR.value)
    cli.split_cpu(
        _CPU_DEVICES.value
        if _CPU_DEVICES.value is not None
        else (1 if _DISTRIBUTED.value else cli.DEFAULT_CPU_DEVICES)
    )
    _initialize_distributed()
    cli.quiet_start()
    if jax.process_index() > 0:
      # Every process runs the same loop; process 0 speaks for all of them.
      logging.set_verbosity(logging.WARNING)
    config = cli.loaded_config(_CONFIG, sys.argv)
    run_mode(config, _WORKDIR.value, _MODE.value)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
