"""What the project's commands share: a quiet start, and one-line errors.

Exit statuses of `main` and `release_import`:
  0  done;
  2  bad input (a flag, a config file or value, a path, a file, a workdir in
     use or holding another run): one line, `error: ...`, saying what to
     change; nothing was written;
  3  the run stopped part-way (it diverged, the disk is full or read-only):
     one line saying how to resume; what was saved before is intact;
  143, 130  stopped by SIGTERM or SIGINT (128 + the signal's number, what a
     shell reports for a process the signal ended, so launchers and
     schedulers that look for 143 to requeue a preempted job see one): one
     line, `stopped by SIGTERM at train step N, saved as ...; rerun the same
     command to resume`, after saving a checkpoint and releasing the
     workdir's lock. Unlike 3, the same command resumes as it is
     (preemption.py).
"""

import contextlib
import errno
import importlib.util
import os
import signal
import sys

import jax
import ml_collections
from absl import flags

from diffusion_distillation.utils import errors
from diffusion_distillation.utils import preemption
from diffusion_distillation.utils import quiet

EXIT_BAD_INPUT = 2
EXIT_STOPPED = 3

_STORAGE_ERRORS = {
    errno.ENOSPC: 'the disk is full',
    errno.EROFS: 'the file system is read-only',
    errno.EDQUOT: 'the disk quota is exceeded',
    errno.EACCES: 'permission denied',
}


# On a CPU backend, two devices (the batch split between them) keep both
# cores busy where one device leaves a core idle part of the time
# (benchmarks/data_parallel.py measures it; benchmarks/README.md has the
# figures).
DEFAULT_CPU_DEVICES = min(2, os.cpu_count() or 1)


# XLA:CPU runs each device of a split CPU on a thread of its own. At a
# collective (the gradient all-reduce) a thread that waits for the other
# logs "may be stuck" after 20 s and aborts the process 40 s later: a busy
# machine deschedules a thread that long. Two devices of one process cannot
# deadlock each other, so wait as long as it takes and warn after 10 min.
PATIENT_COLLECTIVES = {
    'xla_cpu_collective_call_warn_stuck_timeout_seconds': 600,
    'xla_cpu_collective_call_terminate_timeout_seconds': 7 * 24 * 3600,
    'xla_cpu_collective_timeout_seconds': 7 * 24 * 3600,
}


def with_patient_collectives(xla_flags: str) -> str:
  """`xla_flags` (an XLA_FLAGS value) plus PATIENT_COLLECTIVES, except the
  ones it already sets."""
  added = [
      f'--{name}={value}'
      for name, value in PATIENT_COLLECTIVES.items()
      if f'--{name}=' not in xla_flags
  ]
  return ' '.join([xla_flags.strip()] + added).strip()


def split_cpu(num_devices: int):
  """Makes JAX's CPU backend num_devices devices whose collectives wait out
  a busy machine (PATIENT_COLLECTIVES). Must run before JAX starts a
  backend; XLA_FLAGS' --xla_force_host_platform_device_count, when given,
  takes precedence. GPU and TPU runs do not use the CPU devices."""
  if num_devices < 1:
    raise errors.InputError(f'--cpu_devices={num_devices}: give at least 1.')
  # Read when the backend starts; processes this one starts inherit it.
  os.environ['XLA_FLAGS'] = with_patient_collectives(
      os.environ.get('XLA_FLAGS', '')
  )
  if 'xla_force_host_platform_device_count' in os.environ['XLA_FLAGS']:
    return
  jax.config.update('jax_num_cpu_devices', num_devices)


def quiet_start():
  """Quiets the libraries for a command (quiet.py); the storage errors it
  reports in one line are not shown again as the libraries' tracebacks."""
  quiet.quiet_libraries(reported=storage_problem)


def refuse_arguments(argv):
  """InputError for words after the program name that are not flags."""
  if len(argv) > 1:
    raise errors.InputError(
        f'Unexpected argument {" ".join(argv[1:])!r}: every setting is a '
        'flag, --name=value (see --help).'
    )


def exit_on_bad_input(error: errors.InputError):
  """Ends the command with the error's one line and status 2."""
  print(f'error: {error}', file=sys.stderr)
  sys.exit(EXIT_BAD_INPUT)


def _chain(error: BaseException):
  seen = []
  while error is not None and error not in seen:
    seen.append(error)
    error = error.__cause__ or error.__context__
  return seen


def _first_line(error: BaseException) -> str:
  lines = str(error).strip().splitlines()
  return lines[0] if lines else type(error).__name__


def _config_path(argv) -> str:
  for arg in argv:
    if arg.startswith('--config='):
      return arg.split('=', 1)[1]
  return ''


def _unknown_override(argv) -> str:
  """'--config.a.b: ...' for the first override naming no config field."""
  path = _config_path(argv)
  spec = importlib.util.spec_from_file_location('_config_to_check', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for arg in argv:
    if not arg.startswith('--config.'):
      continue
    dotted = arg[len('--config.') :].split('=', 1)[0]
    node, walked = config, []
    for part in dotted.split('.'):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        where = '.'.join(walked) or 'the config'
        fields = (
            ', '.join(sorted(node.keys()))
            if isinstance(node, ml_collections.ConfigDict)
            else 'none'
        )
        return (
            f'--config.{dotted}: {where} has no field {part!r}; its fields: '
            f'{fields}.'
        )
      node, walked = node[part], walked + [part]
  return ''


def _flag_error_message(error: BaseException, argv) -> str:
  chain = _chain(error)
  root = chain[-1]
  path = _config_path(argv)
  if any(
      isinstance(e, ModuleNotFoundError) and e.name == 'configs' for e in chain
  ):
    return (
        f'--config={path} imports the configs package: run the command from '
        'the repository root (the folder that holds configs/).'
    )
  if isinstance(root, SyntaxError):
    return f'--config={path}: line {root.lineno}: {root.msg}.'
  if any('No such file or directory' in str(e) for e in chain):
    return (
        f'--config={path}: no such file; give a config file, e.g. '
        'configs/digits.py.'
    )
  if isinstance(root, (KeyError, AttributeError)):
    try:
      unknown = _unknown_override(argv)
    except Exception:  # noqa: BLE001 - fall back to the plain message
      unknown = ''
    if unknown:
      return unknown
  if isinstance(error, flags.Error):
    return _first_line(error)
  return f'--config={path}: {type(root).__name__}: {_first_line(root)}'


def parse_flags(argv):
  """absl's flag parsing (app.run's flags_parser) with every error, the
  config file's included, in one line and exit status 2."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001 - a config file may raise anything
    exit_on_bad_input(errors.InputError(_flag_error_message(e, argv)))


def loaded_config(config_flag, argv) -> ml_collections.ConfigDict:
  """The --config flag's ConfigDict. ml_collections defers a config file's
  load errors (a missing file) to the first use: InputError then."""
  try:
    config = config_flag.value
    config.keys()  # the deferred error, if any, is raised here
  except Exception as e:  # noqa: BLE001 - a config file may raise anything
    raise errors.InputError(_flag_error_message(e, argv)) from None
  return config


def storage_problem(error: BaseException) -> str:
  """'the disk is full' and the like when `error` (or what caused it, as
  orbax and TensorFlow wrap it) is a storage error; else ''."""
  for e in _chain(error):
    if isinstance(e, OSError) and e.errno in _STORAGE_ERRORS:
      where = f' ({e.filename})' if e.filename else ''
      return f'{_STORAGE_ERRORS[e.errno]}{where}'
    text = str(e)
    for code, problem in _STORAGE_ERRORS.items():
      if os.strerror(code) in text:
        return problem
  return ''


@contextlib.contextmanager
def one_line_errors():
  """Ends the command with one line and status 2 or 3 for the errors a user
  can act on, and 128 + the signal's number for SIGTERM and SIGINT; anything
  else keeps its traceback (a bug to report)."""
  try:
    yield
  except errors.InputError as e:
    exit_on_bad_input(e)
  except preemption.Stopped as e:
    print(e.message, file=sys.stderr)
    sys.exit(e.exit_status)
  except KeyboardInterrupt:  # SIGINT before the handlers (or without them)
    stopped = preemption.Stopped(signal.SIGINT)
    print(stopped.message, file=sys.stderr)
    sys.exit(stopped.exit_status)
  except errors.RunStopped as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(EXIT_STOPPED)
  except Exception as e:  # noqa: BLE001 - re-raised unless storage
    problem = storage_problem(e)
    if not problem:
      raise
    print(
        f'error: the run stopped: {problem}. What it saved before is intact; '
        'free space (or make the workdir writable) and rerun the same '
        'command to resume.',
        file=sys.stderr,
    )
    sys.exit(EXIT_STOPPED)
