"""Imports a checkpoint of Google's release as a model of this project.

  python -m diffusion_distillation.release_import --config=configs/<x>.py \
      --checkpoint=gs://gresearch/diffusion-distillation/cifar_8 \
      --workdir=workdirs/cifar_release

A release checkpoint is one msgpack file written by
`flax.serialization.to_bytes` of the release's TrainState: a nested dict

  step              int, optimizer steps of the run that wrote it
  optimizer         the removed `flax.optim.Optimizer`: target (the trained
                    parameters) and state {step, param_states}
  ema_params        the network's EMA parameters (what the release samples
                    with)
  num_sample_steps  N, the student's sampling steps; 0 for the
                    continuous-time teacher

The release's code no longer imports on current Flax (`flax.optim` was
removed in 0.6.0), but the files do not need it: `msgpack_restore` gives
plain dicts and NumPy arrays. The parameters are checked name by name
against the config's network and written to <workdir>/models/<N>, where
`--mode=sample` samples them and `--mode=distill` takes them as its teacher
(models/0 of the same workdir, or any models/<N> named by
`distill.teacher_checkpoint` with `distill.start_num_steps=N`).
"""

import os
import sys
from typing import Any

import flax
import jax
import ml_collections
import numpy as np
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from diffusion_distillation import network as network_lib
from diffusion_distillation.runs import config_checks
from diffusion_distillation.runs import run_config
from diffusion_distillation.runs import workdir as workdir_lib
from diffusion_distillation.runs import workdir_lock
from diffusion_distillation.utils import cli
from diffusion_distillation.utils import errors

_RELEASE_KEYS = ('step', 'optimizer', 'ema_params', 'num_sample_steps')


def read_release_checkpoint(path: str) -> dict:
  """The state dict of a release checkpoint file (local or gs://).

  Args:
    path: the msgpack file, e.g. gs://gresearch/diffusion-distillation/cifar_8.

  Returns:
    The release TrainState as nested dicts of NumPy arrays and numbers.

  Raises:
    InputError when the file cannot be read or holds no release state.
  """
  # Loaded here, not with the module: only reading a file needs TensorFlow
  # (tf.io.gfile reads gs:// paths).
  import tensorflow as tf

  try:
    if tf.io.gfile.isdir(path):
      raise errors.InputError(
          f'{path} is a directory; give the release checkpoint file itself '
          '(e.g. gs://gresearch/diffusion-distillation/cifar_8).'
      )
    if not tf.io.gfile.exists(path):
      raise errors.InputError(
          f'No release checkpoint at {path}: the file does not exist.'
      )
    with tf.io.gfile.GFile(path, 'rb') as f:
      data = f.read()
  except tf.errors.OpError as e:  # e.g. GCS unreachable or access denied
    raise errors.InputError(
        f'Cannot read {path}: {e.message.splitlines()[0]}'
    ) from None
  try:
    state = flax.serialization.msgpack_restore(data)
  except (ValueError, TypeError) as e:  # what msgpack raises on bad bytes
    raise errors.InputError(
        f'{path} is not a flax msgpack file ({e}); give a release checkpoint '
        'file.'
    ) from None
  if not isinstance(state, dict) or not (
      isinstance(state.get('ema_params'), dict)
      or isinstance(_optimizer_target(state), dict)
  ):
    found = (
        f'top-level keys {sorted(state)}'
        if isinstance(state, dict)
        else f'a {type(state).__name__}'
    )
    raise errors.InputError(
        f'{path} is not a release train state: expected the keys '
        f'{", ".join(_RELEASE_KEYS)} with parameters in ema_params or '
        f'optimizer.target, found {found}.'
    )
  return state


def _optimizer_target(state: dict) -> dict | None:
  optimizer = state.get('optimizer')
  return optimizer.get('target') if isinstance(optimizer, dict) else None


def release_params(state_dict: dict, *, use_ema: bool = True) -> tuple:
  """The network parameters of a release state dict and its step count.

  Args:
    state_dict: what `read_release_checkpoint` returns.
    use_ema: take `ema_params` (what the release samples with); False, or a
      state without them, takes the optimizer's target.

  Returns:
    (params as nested dicts of arrays, num_sample_steps: int, 0 if absent).

  Raises:
    InputError when the parameters asked for are not in the state.
  """
  params = state_dict.get('ema_params') if use_ema else None
  if not isinstance(params, dict):
    params = _optimizer_target(state_dict)
    if not isinstance(params, dict):
      raise errors.InputError(
          'The release checkpoint has no optimizer.target; import its '
          'ema_params instead (--use_ema=true).'
      )
    if use_ema:
      logging.warning(
          'The release checkpoint has no ema_params; importing '
          'optimizer.target.'
      )
  return params, _as_int(
      state_dict.get('num_sample_steps', 0), 'num_sample_steps'
  )


def _as_int(value, name: str) -> int:
  """A release scalar (a Python int or a 0-d array) as an int."""
  value = np.asarray(value)
  if value.shape != () or value.dtype.kind not in 'iuf':
    raise errors.InputError(
        f"The release checkpoint's {name} is {value!r}, not a number."
    )
  return int(value)


def network_param_shapes(config: ml_collections.ConfigDict) -> Any:
  """Shapes and dtypes of the config network's parameters (no memory)."""
  return network_lib.abstract_params(
      network_lib.build_network(config, dropout=0.0), config
  )


def fit_params(found: dict, expected: Any, *, source: str) -> dict:
  """Release parameters as the config's network holds them.

  Args:
    found: parameters from `release_params`, nested dicts of arrays.
    expected: `network_param_shapes(config)`.
    source: what `found` came from, for error messages.

  Returns:
    `found` with every leaf a NumPy array of the network's shape and dtype.

  Raises:
    InputError naming the first parameter that is missing, extra, not a
    float array, or of another shape.
  """
  wanted = flax.traverse_util.flatten_dict(expected)
  fitted = {}
  for key, leaf in flax.traverse_util.flatten_dict(found).items():
    if not isinstance(leaf, np.ndarray) or leaf.dtype.kind != 'f':
      raise errors.InputError(
          f'{source} has parameter {"/".join(key)} of type '
          f'{getattr(leaf, "dtype", type(leaf).__name__)}, not a float array.'
      )
    shape = tuple(wanted[key].shape) if key in wanted else leaf.shape
    # Flax before 0.3.6 stored GroupNorm's scale and bias as [1, 1, 1, C],
    # now [C]; the release's own loader reshaped them the same way.
    if leaf.shape == (1,) * (leaf.ndim - len(shape)) + shape:
      leaf = leaf.reshape(shape)
    fitted[key] = leaf
  fitted = flax.traverse_util.unflatten_dict(fitted)
  workdir_lib.check_param_shapes(fitted, expected, source)
  return jax.tree_util.tree_map(
      lambda leaf, want: leaf.astype(want.dtype, copy=False),
      fitted,
      flax.core.unfreeze(expected),
  )


def import_release_checkpoint(
    path: str,
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    num_sample_steps: int | None = None,
    use_ema: bool = True,
) -> int:
  """Writes a release checkpoint's parameters as <workdir>/models/<N>.

  Everything is checked before anything is written: the config, the file,
  every parameter against the config's network, and that models/<N> does
  not exist yet. The config is recorded in the workdir as a run records it,
  so `--mode=sample` and `--mode=distill` with the same config accept it.

  Args:
    path: the release checkpoint file, local or gs://.
    config: the config whose network the checkpoint must fit.
    workdir: where to write models/<N> (and config.json when new).
    num_sample_steps: N to save the model as; None takes the checkpoint's
      own (0 = continuous-time teacher, N > 0 = student sampling in N steps).
    use_ema: import `ema_params` rather than the optimizer's target.

  Returns:
    N, the step count the model was saved under.

  Raises:
    InputError on any mismatch, before anything is written.
  """
  config_checks.check_config(config)
  state = read_release_checkpoint(path)
  params, checkpoint_steps = release_params(state, use_ema=use_ema)
  model_steps = (
      checkpoint_steps if num_sample_steps is None else num_sample_steps
  )
  if model_steps < 0:
    raise errors.InputError(
        f'num_sample_steps={model_steps}: use 0 for a continuous-time teacher '
        'or the N steps a student samples in.'
    )
  if model_steps in workdir_lib.saved_models(workdir):
    raise errors.InputError(
        f'{os.path.join(workdir_lib.models_dir(workdir), str(model_steps))} '
        'already exists and is kept: import into another --workdir, or save '
        'under another --num_sample_steps.'
    )
  meta = {
      'imported_from': path,
      'imported_params': (
          'ema_params'
          if params is state.get('ema_params')
          else 'optimizer.target'
      ),
      'release_step': _as_int(state.get('step', 0), 'step'),
      'release_num_sample_steps': checkpoint_steps,
  }
  params = fit_params(
      params, network_param_shapes(config), source=f'release checkpoint {path}'
  )
  for name, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    if not np.all(np.isfinite(leaf)):
      key = '/'.join(str(getattr(k, 'key', k)) for k in name)
      raise errors.InputError(
          f'release checkpoint {path}: parameter {key} holds NaN or inf; the '
          'file is damaged or not a trained model.'
      )
  changes = run_config.check(workdir, config)
  if changes:
    raise errors.InputError(
        f'{workdir} holds a run of a different config: {next(iter(changes))} '
        'differs; import with the same config.'
    )
  with workdir_lock.WorkdirLock(workdir):
    run_config.record(workdir, config)
    workdir_lib.save_model(workdir, model_steps, params, meta)
  return model_steps


def _define_flags():
  """The command line's flags; defined only when run as a command, so that
  importing this module next to main.py defines no flag twice."""
  config_flags.DEFINE_config_file(
      'config',
      None,
      'Path to a config file in configs/ whose network the checkpoint fits.',
      lock_config=True,
  )
  flags.DEFINE_string(
      'checkpoint',
      None,
      'Release checkpoint file, local or gs://, e.g. '
      'gs://gresearch/diffusion-distillation/cifar_8.',
  )
  flags.DEFINE_string(
      'workdir',
      None,
      'Workdir to write models/<N> into; then run '
      'diffusion_distillation.main with the same config and workdir.',
  )
  flags.DEFINE_integer(
      'num_sample_steps',
      None,
      'N to save the model as; default: the '
      "checkpoint's own (0 for a teacher).",
  )
  flags.DEFINE_bool(
      'use_ema',
      True,
      "Import ema_params; false imports the optimizer's target.",
  )
  flags.mark_flags_as_required(['config', 'checkpoint', 'workdir'])


def main(argv):
  args = flags.FLAGS
  with cli.one_line_errors():
    cli.refuse_arguments(argv)
    workdir_lock.check_workdir(args.workdir)
    config = cli.loaded_config(args['config'], sys.argv)
    cli.quiet_start()
    model_steps = import_release_checkpoint(
        args.checkpoint,
        config,
        args.workdir,
        num_sample_steps=args.num_sample_steps,
        use_ema=args.use_ema,
    )
  logging.info(
      'Imported %s as %s',
      args.checkpoint,
      os.path.join(workdir_lib.models_dir(args.workdir), str(model_steps)),
  )


if __name__ == '__main__':
  _define_flags()
  app.run(main, flags_parser=cli.parse_flags)
