"""The guided wing's parts of the steps: what each update conditions on,
and stage one's step.

The core's `train_step` and `distill_step` take a `condition` hook,
condition(rng, labels) -> (labels, w). The guided teacher trains with
`DropLabels` (each label replaced by the null label with probability
p_uncond); the rounds of stage two distill with `DrawStrengths` (w ~
U[w_min, w_max] per example, for the w-conditioned teacher and student
alike). `guide_step` is stage one: the w-conditioned student against the
guided teacher, in continuous time.
"""

import dataclasses

import jax
import ml_collections

from diffusion_distillation import unet
from diffusion_distillation.guided import denoise
from diffusion_distillation.guided import guidance
from diffusion_distillation.training import steps


def null_label_of(config: ml_collections.ConfigDict) -> int:
  """The label that stands for "no class": one past the dataset's."""
  return int(config.dataset.num_classes)


@dataclasses.dataclass(frozen=True)
class DropLabels:
  """The guided teacher's condition: each label replaced by `null_label`
  with probability p_uncond; no w."""

  null_label: int
  p_uncond: float

  @classmethod
  def of(cls, config: ml_collections.ConfigDict) -> 'DropLabels':
    return cls(null_label_of(config), float(config.guidance.p_uncond))

  def __call__(self, rng, labels):
    dropped = guidance.drop_labels(
        rng, labels, null_label=self.null_label, p_uncond=self.p_uncond
    )
    return dropped, None


@dataclasses.dataclass(frozen=True)
class DrawStrengths:
  """The students' condition: the batch's labels, and w ~ U[w_min, w_max]
  per example."""

  w_min: float
  w_max: float

  @classmethod
  def of(cls, config: ml_collections.ConfigDict) -> 'DrawStrengths':
    return cls(float(config.guidance.w_min), float(config.guidance.w_max))

  def __call__(self, rng, labels):
    w = guidance.sample_guidance(
        rng, labels.shape[0], w_min=self.w_min, w_max=self.w_max
    )
    return labels, w


def guide_step(
    state,
    teacher_params,
    batch,
    rng,
    *,
    substep_loop,
    condition: DrawStrengths,
    teacher_network: unet.UNet,
    null_label: int,
    **settings,
):
  """K updates of the w-conditioned student against the guided teacher
  (`teacher_params` of `teacher_network`, classifier-free against
  `null_label`) at the w `condition` draws per example, in continuous time:
  stage one of guided distillation. Returns (state, metrics). Pure."""

  def update(state, images, labels):
    keys = steps.update_keys(rng, state, conditioned=True)
    labels, w = condition(keys[2], labels)
    teacher_fn = denoise.denoise_fn(
        teacher_network,
        jax.lax.stop_gradient(teacher_params),
        labels,
        w=w,
        null_label=null_label,
        mean_type=settings['mean_type'],
        clip_x=False,
    )
    return steps.student_update(
        state,
        images,
        labels,
        keys[:2],
        teacher_fn=teacher_fn,
        num_steps=0,
        w=w,
        **settings,
    )

  return steps.scan_updates(update, state, batch, substep_loop=substep_loop)
