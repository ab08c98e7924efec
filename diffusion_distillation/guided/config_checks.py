"""The checks of a guided config: the core's, over the guided phase table
(stage one's section checked as every phase's), and the guidance section's
own, with one-line errors that say what to change."""

import ml_collections

from diffusion_distillation.guided import phases
from diffusion_distillation.runs import config_checks
from diffusion_distillation.utils import errors


def check_guidance(config: ml_collections.ConfigDict):
  """The guidance section and what it needs of the others
  (configs/common.add_guided_distillation)."""
  guidance = config.guidance
  if not config.dataset.class_conditional:
    raise errors.InputError(
        'Classifier-free guidance needs labels: set '
        'dataset.class_conditional=True, or drop the guidance section.'
    )
  if not 0.0 < guidance.p_uncond < 1.0:
    raise errors.InputError(
        f'guidance.p_uncond={guidance.p_uncond}: the teacher needs both '
        'conditional and unconditional examples; use 0 < p_uncond < 1 '
        '(0.1-0.2 is usual).'
    )
  if not guidance.w_min <= guidance.w_max:
    raise errors.InputError(
        f'guidance.w_min={guidance.w_min} > w_max={guidance.w_max}; swap them.'
    )
  if 'eval' in config and not config.eval.get('guidance'):
    raise errors.InputError(
        'eval.guidance is empty: give the guidance strengths to evaluate, '
        "e.g. --config.eval.guidance='(0.0,1.0)'."
    )


def check_config(
    config: ml_collections.ConfigDict, num_devices: int = 1
) -> ml_collections.ConfigDict:
  """Raises errors.InputError on the first invalid value; returns the config."""
  config_checks.check_config(config, num_devices, phases.PHASES)
  check_guidance(config)
  return config
