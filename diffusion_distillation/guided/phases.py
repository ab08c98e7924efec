"""The guided wing's phase table: the core's teacher and rounds with the
guided hooks, and stage one between them.

  train    the teacher, its labels dropped (steps.DropLabels); no
           w-embedding.
  guide    stage one: the w-conditioned student against the guided teacher
           (steps.guide_step), from guide/ checkpoints.
  distill  stage two: the core's rounds, w drawn per example
           (steps.DrawStrengths) for the w-conditioned teacher and student.

Each phase keeps the core phase's name, section, folder and random stream,
so a guided workdir's checkpoints and keys are what they were; the run's
checks and recovery fields cover every phase of `PHASES`.
"""

import dataclasses

import ml_collections

from diffusion_distillation import network as network_lib
from diffusion_distillation.guided import steps
from diffusion_distillation.training import phases

# Stage one's random stream (and its w-embedding's initialisation).
STAGE_ONE_STREAM = phases.FIRST_WING_STREAM


def stage_one_init_key(seed: int):
  """The key of the w-embedding's initial parameters."""
  return phases.stream_key(seed, STAGE_ONE_STREAM)


def _stage_one_options(config: ml_collections.ConfigDict) -> dict:
  """guide_step's settings: the w it draws and the guided teacher's
  network (no w-embedding, no dropout)."""
  return dict(
      condition=steps.DrawStrengths.of(config),
      teacher_network=network_lib.build_network(
          config, dropout=0.0, guidance_embedding=False
      ),
      null_label=steps.null_label_of(config),
  )


TEACHER = dataclasses.replace(
    phases.TEACHER,
    step_options=lambda config: {'condition': steps.DropLabels.of(config)},
)
GUIDE = phases.Phase(
    name='guide',
    description='stage one',
    checkpoints='guide',
    rng_stream=STAGE_ONE_STREAM,
    step=steps.guide_step,
    has_teacher=True,
    num_updates_field='num_steps',
    dropout_section='guide',
    decay_field='num_steps',
    guidance_embedding=True,
    step_options=_stage_one_options,
)
DISTILL = dataclasses.replace(
    phases.DISTILL,
    guidance_embedding=True,
    step_options=lambda config: {'condition': steps.DrawStrengths.of(config)},
)
PHASES = (TEACHER, GUIDE, DISTILL)
