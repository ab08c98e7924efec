"""The training phases of a run, as values: one table that every module reads.

A phase is one kind of training: the teacher ('train'), stage one of guided
distillation ('guide', guided configs only) and the distillation rounds
('distill'). Its name is its --mode and its config section; the table says
where it checkpoints, which random stream it draws from, which step it
runs, whether that step takes a teacher, and how its network and optimizer
are set up. `trainer.build`, `config_checks` and the run-config guard read
it, so each phase gets the same checks and the same recovery fields by
construction.
"""

import dataclasses
import enum
from collections.abc import Callable

import jax
import ml_collections

from diffusion_distillation import network as network_lib
from diffusion_distillation import steps
from diffusion_distillation import workdir


class RngStream(enum.IntEnum):
  """Independent random streams of a run, each folded into the config seed."""

  INIT = 0  # the teacher's initial parameters
  TRAIN = 1  # teacher training: times, noise and dropout of every step
  DISTILL = 2  # distillation rounds: times and noise of every step
  GUIDE = 3  # stage one of guided distillation (and its w-embedding init)


def stream_key(seed: int, stream: RngStream) -> jax.Array:
  return jax.random.fold_in(jax.random.key(seed), int(stream))


@dataclasses.dataclass(frozen=True)
class Phase:
  """One kind of training of a run.

  Attributes:
    name: its --mode, config section and metric prefix.
    description: how logs name it.
    checkpoints: the workdir folder of its periodic checkpoints.
    rng_stream: the stream its steps draw from.
    step: the pure step function (see steps.py).
    has_teacher: whether the step takes a teacher's parameters.
    guided_only: whether only guided configs have it.
    num_updates_field: config[name]'s field with its number of updates.
    dropout_section: the config section whose `dropout` its network uses.
    decay_field: config[name]'s field over which the learning rate decays
      to 0 (None: constant after warmup).
  """

  name: str
  description: str
  checkpoints: str
  rng_stream: RngStream
  step: Callable
  has_teacher: bool
  guided_only: bool
  num_updates_field: str
  dropout_section: str
  decay_field: str | None

  def settings(self, config: ml_collections.ConfigDict):
    """config[name]: the phase's section."""
    return config[self.name]

  def num_updates(self, config: ml_collections.ConfigDict) -> int:
    return self.settings(config)[self.num_updates_field]

  def dropout(self, config: ml_collections.ConfigDict) -> float:
    return config[self.dropout_section].dropout

  def decay_steps(self, config: ml_collections.ConfigDict) -> int:
    if self.decay_field is None:
      return 0
    return self.settings(config)[self.decay_field]


TEACHER = Phase(
    name='train',
    description='teacher training',
    checkpoints=workdir.TEACHER_CHECKPOINTS,
    rng_stream=RngStream.TRAIN,
    step=steps.train_step,
    has_teacher=False,
    guided_only=False,
    num_updates_field='num_steps',
    dropout_section='model',
    decay_field=None,
)
GUIDE = Phase(
    name='guide',
    description='stage one',
    checkpoints=workdir.GUIDE_CHECKPOINTS,
    rng_stream=RngStream.GUIDE,
    step=steps.guide_step,
    has_teacher=True,
    guided_only=True,
    num_updates_field='num_steps',
    dropout_section='guide',
    decay_field='num_steps',
)
DISTILL = Phase(
    name='distill',
    description='distillation',
    checkpoints=workdir.DISTILL_CHECKPOINTS,
    rng_stream=RngStream.DISTILL,
    step=steps.distill_step,
    has_teacher=True,
    guided_only=False,
    num_updates_field='steps_per_round',
    dropout_section='distill',
    decay_field='steps_per_round',
)
PHASES = (TEACHER, GUIDE, DISTILL)

# What may change to rescue a run that diverged, in every phase: it changes
# the training from the step it resumes at, so the workdir records it.
RECOVERY_FIELDS = (
    'learning_rate',
    'skip_nonfinite_updates',
    'max_skipped_fraction',
)
RECOVERY_CHANGES = tuple(
    f'{phase.name}.{field}' for phase in PHASES for field in RECOVERY_FIELDS
)


def get(name: str) -> Phase:
  """The phase called `name` ('train' | 'guide' | 'distill')."""
  for phase in PHASES:
    if phase.name == name:
      return phase
  raise ValueError(
      f'Unknown phase {name!r}; choose one of {tuple(p.name for p in PHASES)}.'
  )


def of_config(config: ml_collections.ConfigDict) -> tuple:
  """The phases a config trains (stage one for a guided config only)."""
  guided = network_lib.is_guided(config)
  return tuple(p for p in PHASES if guided or not p.guided_only)
