"""Validation of a run's config, with one-line errors that say what to change.

Called where a run starts (the pipeline, the release importer), after
command-line overrides, so a bad value fails before any work or any write.
Config files themselves are plain data.
"""

import math

import jax
import ml_collections

from diffusion_distillation import diffusion
from diffusion_distillation import sampling
from diffusion_distillation import schedules
from diffusion_distillation import unet
from diffusion_distillation.data import datasets
from diffusion_distillation.training import phases
from diffusion_distillation.training import train_state as train_state_lib
from diffusion_distillation.utils import errors

COMPUTE_DTYPES = ('float32', 'bfloat16')  # model.dtype


def check_round_range(start_num_steps: int, end_num_steps: int):
  """start/end must be >= 1 with a power-of-two ratio (rounds halve)."""
  if end_num_steps < 1 or start_num_steps <= end_num_steps:
    raise errors.InputError(
        f'distill.start_num_steps={start_num_steps} and end_num_steps='
        f'{end_num_steps}: need start > end >= 1.'
    )
  ratio = start_num_steps / end_num_steps
  if start_num_steps % end_num_steps or not math.log2(ratio).is_integer():
    raise errors.InputError(
        f'distill.start_num_steps / end_num_steps = {start_num_steps} / '
        f'{end_num_steps} is not a power of two; each round halves the steps.'
    )


def check_batch(batch_size: int, num_devices: int, section: str):
  if batch_size < 1:
    raise errors.InputError(
        f'{section}.batch_size={batch_size}: a batch needs at least one '
        f'image per device; use a positive multiple of {num_devices}.'
    )
  if batch_size % num_devices:
    on_cpu = ' (or --cpu_devices=1)' if jax.default_backend() == 'cpu' else ''
    raise errors.InputError(
        f'{section}.batch_size={batch_size} is not divisible by the '
        f'{num_devices} devices; use a multiple of {num_devices}{on_cpu}.'
    )


def check_fraction(value: float, name: str):
  """A share such as a dropout rate or an EMA decay: in [0, 1)."""
  if not 0 <= value < 1:  # False for NaN too
    raise errors.InputError(f'{name}={value}: give a value in [0, 1).')


def check_positive_int(value: int, name: str):
  if value < 1:
    raise errors.InputError(f'{name}={value}: give at least 1.')


def check_optimization(section: ml_collections.ConfigDict, name: str):
  """A training section's learning rate, EMA decay and dropout (a student's
  sections have their own dropout)."""
  rate = section.learning_rate
  if not 0 < rate < math.inf:  # False for NaN too
    raise errors.InputError(
        f'{name}.learning_rate={rate}: give a positive, finite learning rate.'
    )
  check_fraction(section.ema_decay, f'{name}.ema_decay')
  if 'dropout' in section:
    check_fraction(section.dropout, f'{name}.dropout')


def check_dataset(dataset: ml_collections.ConfigDict):
  """The name is known; image size and classes fit a tfds dataset."""
  names = datasets.IN_MEMORY_DATASETS + tuple(datasets.TFDS_DATASETS)
  if dataset.name not in names:
    raise errors.InputError(
        f'Unknown dataset.name {dataset.name!r}; choose one of {names}.'
    )
  if dataset.name not in datasets.TFDS_DATASETS:
    return
  native_size, num_classes, channels, _ = datasets.TFDS_DATASETS[dataset.name]
  if native_size and dataset.image_size != native_size:
    raise errors.InputError(
        f'dataset.image_size={dataset.image_size}, but '
        f'{dataset.name} images are {native_size}x{native_size}; '
        f'set it to {native_size}.'
    )
  if dataset.channels != channels:
    kind = 'RGB' if channels == 3 else 'grayscale'
    raise errors.InputError(
        f'dataset.channels={dataset.channels}, but '
        f'{dataset.name} images are {kind}; set it to {channels}.'
    )
  if dataset.class_conditional and not num_classes:
    raise errors.InputError(
        f'{dataset.name} has no labels; set dataset.class_conditional=False.'
    )
  if dataset.class_conditional and dataset.num_classes != num_classes:
    raise errors.InputError(
        f'dataset.num_classes={dataset.num_classes}, but '
        f'{dataset.name} has {num_classes} classes; set it to '
        f'{num_classes}.'
    )


def _unset_fields(tree, prefix=''):
  """Dotted names of fields left None: configs/common.py's required ones."""
  for key, value in tree.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _unset_fields(value, f'{prefix}{key}.')
    elif value is None:
      yield f'{prefix}{key}'


def check_config(
    config: ml_collections.ConfigDict,
    num_devices: int = 1,
    table: tuple = phases.PHASES,
) -> ml_collections.ConfigDict:
  """Raises errors.InputError on the first invalid value; returns the config.

  `table`: the phases the config trains, each section checked alike (a
  wing passes its own table and checks its own sections after these).
  """
  # head_dim and num_heads: exactly one is None, which unet checks.
  unset = [
      name
      for name in _unset_fields(config)
      if name not in ('model.head_dim', 'model.num_heads')
  ]
  if unset:
    raise errors.InputError(
        f'{unset[0]} is not set: give it a value in the config file or with '
        f'--config.{unset[0]}=VALUE.'
    )
  model = config.model
  try:
    schedules.get_logsnr_schedule(**model.logsnr_schedule)
    diffusion.check_mean_type(
        model.mean_type, logsnr_min=model.logsnr_schedule.logsnr_min
    )
    diffusion.check_loss_weighting(model.mean_loss_weight_type)
    diffusion.check_variance(config.sample.logvar_type)
    unet.check_logsnr_input_type(model.logsnr_input_type)
  except ValueError as e:
    raise errors.InputError(str(e)) from None
  if model.dtype not in COMPUTE_DTYPES:
    raise errors.InputError(
        f'Unknown model.dtype {model.dtype!r}; choose one of {COMPUTE_DTYPES}.'
    )
  check_dataset(config.dataset)
  if config.sample.sampler not in sampling.METHODS:
    raise errors.InputError(
        f'Unknown sample.sampler {config.sample.sampler!r}; choose one of '
        f'{sampling.METHODS}.'
    )
  check_round_range(
      config.distill.start_num_steps, config.distill.end_num_steps
  )
  check_positive_int(
      config.distill.final_rounds_updates_multiplier,
      'distill.final_rounds_updates_multiplier',
  )
  check_fraction(model.dropout, 'model.dropout')
  check_positive_int(config.log_every_steps, 'log_every_steps')
  check_positive_int(config.sample.num_samples, 'sample.num_samples')
  for phase in table:
    check_phase(config, phase, num_devices)
  check_batch(config.sample.batch_size, num_devices, 'sample')
  check_checkpointing(config.checkpoint)
  if 'eval' in config:
    check_eval(config.eval, num_devices)
  return config


def check_phase(
    config: ml_collections.ConfigDict, phase: phases.Phase, num_devices: int
):
  """The checks every phase's section gets alike (training/phases.py)."""
  section, settings = phase.name, phase.settings(config)
  check_optimization(settings, section)
  check_batch(settings.batch_size, num_devices, section)
  try:
    train_state_lib.check_ema_schedule(settings.ema_schedule)
  except ValueError as e:
    raise errors.InputError(f'{section}: {e}') from None
  fraction = settings.max_skipped_fraction
  if not 0 <= fraction < 1:
    raise errors.InputError(
        f'{section}.max_skipped_fraction={fraction}: give a share of '
        'updates in [0, 1).'
    )
  substeps, num_steps = settings.substeps, phase.num_updates(config)
  if substeps < 1 or num_steps < 1:
    raise errors.InputError(
        f'{section}: {num_steps} steps with substeps={substeps}: both must '
        'be at least 1.'
    )
  if num_steps % substeps:
    raise errors.InputError(
        f'{section}: {num_steps} steps are not a multiple of substeps='
        f'{substeps}; make them one.'
    )


def check_checkpointing(every: ml_collections.ConfigDict):
  if every.max_to_keep is None or every.max_to_keep < 1:
    raise errors.InputError(
        f'checkpoint.max_to_keep={every.max_to_keep}: keep at least 1 '
        'periodic checkpoint, or a killed run restarts from scratch.'
    )
  if every.every_steps < 0 or every.every_secs <= 0:
    raise errors.InputError(
        f'checkpoint.every_steps={every.every_steps}, every_secs='
        f'{every.every_secs}: use every_steps >= 0 (0: by time only) and '
        'every_secs > 0.'
    )


def check_eval(settings: ml_collections.ConfigDict, num_devices: int):
  """The eval section: digits' (reference_num_steps) or the tfds datasets'
  (inception_weights, reference_stats, reference_num_images). Whether the
  weights file exists is checked when --mode=eval starts."""
  check_batch(settings.batch_size, num_devices, 'eval')
  # Precision and recall need more points than their k = 3 neighbours.
  least = 4 if 'inception_weights' in settings else 2
  if settings.num_samples < least:
    raise errors.InputError(
        f'eval.num_samples={settings.num_samples}: need at least {least} '
        'samples per entry.'
    )
  for field in ('teacher_num_steps', 'ancestral_num_steps'):
    if any(n < 1 for n in settings[field]):
      raise errors.InputError(
          f'eval.{field}={tuple(settings[field])}: step counts must be >= 1.'
      )
  if settings.get('reference_num_steps', 1) < 1:
    raise errors.InputError(
        f'eval.reference_num_steps={settings.reference_num_steps} must be >= 1.'
    )
  if settings.get('reference_num_images', 4) < 4:
    raise errors.InputError(
        f'eval.reference_num_images={settings.reference_num_images}: need at '
        'least 4 real images.'
    )
