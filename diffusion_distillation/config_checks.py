"""Validation of a run's config, with one-line errors that say what to change.

Called at the end of every `configs/*.py:get_config()` and again by the
pipeline after command-line overrides, so a bad value fails before any work
or any write.
"""

import importlib.util
import math
import os

import jax
import ml_collections

from diffusion_distillation import data
from diffusion_distillation import diffusion
from diffusion_distillation import schedules
from diffusion_distillation import train_state
from diffusion_distillation import unet


class ConfigError(ValueError):
  """A config value that cannot work; the message names the fix."""


def check_round_range(start_num_steps: int, end_num_steps: int):
  """start/end must be >= 1 with a power-of-two ratio (rounds halve)."""
  if end_num_steps < 1 or start_num_steps <= end_num_steps:
    raise ConfigError(
        f'distill.start_num_steps={start_num_steps} and end_num_steps='
        f'{end_num_steps}: need start > end >= 1.')
  ratio = start_num_steps / end_num_steps
  if start_num_steps % end_num_steps or not math.log2(ratio).is_integer():
    raise ConfigError(
        f'distill.start_num_steps / end_num_steps = {start_num_steps} / '
        f'{end_num_steps} is not a power of two; each round halves the steps.')


def check_batch(batch_size: int, num_devices: int, section: str):
  if batch_size < 1 or batch_size % num_devices:
    raise ConfigError(
        f'{section}.batch_size={batch_size} is not divisible by the '
        f'{num_devices} devices; use a multiple of {num_devices}.')


def check_dataset(dataset: ml_collections.ConfigDict):
  """The name is known; image size and classes fit a tfds dataset."""
  names = data.IN_MEMORY_DATASETS + tuple(data.TFDS_DATASETS)
  if dataset.name not in names:
    raise ConfigError(f'Unknown dataset.name {dataset.name!r}; choose one of '
                      f'{names}.')
  if dataset.name not in data.TFDS_DATASETS:
    return
  native_size, num_classes = data.TFDS_DATASETS[dataset.name]
  if native_size and dataset.image_size != native_size:
    raise ConfigError(f'dataset.image_size={dataset.image_size}, but '
                      f'{dataset.name} images are {native_size}x{native_size}; '
                      f'set it to {native_size}.')
  if dataset.channels != 3:
    raise ConfigError(f'dataset.channels={dataset.channels}, but '
                      f'{dataset.name} images are RGB; set it to 3.')
  if dataset.class_conditional and not num_classes:
    raise ConfigError(f'{dataset.name} has no labels; set '
                      'dataset.class_conditional=False.')
  if dataset.class_conditional and dataset.num_classes != num_classes:
    raise ConfigError(f'dataset.num_classes={dataset.num_classes}, but '
                      f'{dataset.name} has {num_classes} classes; set it to '
                      f'{num_classes}.')


def check_config(config: ml_collections.ConfigDict,
                 num_devices: int = 1) -> ml_collections.ConfigDict:
  """Raises ConfigError on the first invalid value; returns the config."""
  model = config.model
  try:
    schedules.get_logsnr_schedule(**model.logsnr_schedule)
    diffusion.check_mean_type(
        model.mean_type, logsnr_min=model.logsnr_schedule.logsnr_min)
    diffusion.check_loss_weighting(model.mean_loss_weight_type)
    diffusion.check_variance(config.sample.logvar_type)
    # Traced only: configs are checked while flags are parsed, before
    # main.py may call jax.distributed.initialize(), which must come before
    # anything starts a JAX backend.
    jax.eval_shape(lambda: unet.logsnr_to_time(
        0.0, logsnr_input_type=model.logsnr_input_type))
  except ValueError as e:
    raise ConfigError(str(e)) from None
  check_dataset(config.dataset)
  if config.sample.sampler not in ('ddim', 'ancestral'):
    raise ConfigError(f"Unknown sample.sampler {config.sample.sampler!r}; "
                      "choose 'ddim' or 'ancestral'.")
  check_round_range(config.distill.start_num_steps,
                    config.distill.end_num_steps)
  for section in ('train', 'distill'):
    check_batch(config[section].batch_size, num_devices, section)
    try:
      train_state.check_ema_schedule(config[section].ema_schedule)
    except ValueError as e:
      raise ConfigError(f'{section}: {e}') from None
    substeps = config[section].substeps
    num_steps = config[section].get('num_steps',
                                     config[section].get('steps_per_round'))
    if substeps < 1 or num_steps % substeps:
      raise ConfigError(
          f'{section}: {num_steps} steps are not a multiple of substeps='
          f'{substeps}; make them one.')
  check_batch(config.sample.batch_size, num_devices, 'sample')
  if 'eval' in config:
    check_eval(config.eval, num_devices)
  return config


def check_eval(settings: ml_collections.ConfigDict, num_devices: int):
  check_batch(settings.batch_size, num_devices, 'eval')
  if settings.num_samples < 2:
    raise ConfigError(f'eval.num_samples={settings.num_samples}: a Fréchet '
                      'distance needs at least 2 samples.')
  for field in ('teacher_num_steps', 'ancestral_num_steps'):
    if any(n < 1 for n in settings[field]):
      raise ConfigError(f'eval.{field}={tuple(settings[field])}: step counts '
                        'must be >= 1.')
  if settings.reference_num_steps < 1:
    raise ConfigError(f'eval.reference_num_steps={settings.reference_num_steps}'
                      ' must be >= 1.')


def base_config(this_file: str, name: str) -> ml_collections.ConfigDict:
  """get_config() of configs/<name>.py next to `this_file`.

  Lets a config start from its base config wherever the configs folder is
  (config files are loaded by path, not imported as a package).
  """
  path = os.path.join(os.path.dirname(os.path.abspath(this_file)),
                      f'{name}.py')
  spec = importlib.util.spec_from_file_location(f'_dd_config_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()
