"""The training phases of a run, as values: one table that every module reads.

A phase is one kind of training: the teacher ('train') and the
distillation rounds ('distill'). Its name is its --mode and its config
section; the table says where it checkpoints, which random stream it draws
from, which step it runs, whether that step takes a teacher, and how its
network, optimizer and step are set up. `trainer.build`, `config_checks` and
the run-config guard read a table of phases (`PHASES`, or a wing's: the
guided wing's adds stage one and conditions the steps, see
diffusion_distillation/guided/phases.py), so every phase of a table gets the
same checks and the same recovery fields by construction.
"""

import dataclasses
import enum
from collections.abc import Callable

import jax
import ml_collections

from diffusion_distillation.training import steps


class RngStream(enum.IntEnum):
  """Independent random streams of a run, each folded into the config seed."""

  INIT = 0  # the teacher's initial parameters
  TRAIN = 1  # teacher training: times, noise and dropout of every step
  DISTILL = 2  # distillation rounds: times and noise of every step


# A wing's phases number their streams from here on. A stream's number is
# folded into every key it gives, so a number, once given, never changes.
FIRST_WING_STREAM = 3


def stream_key(seed: int, stream: int) -> jax.Array:
  return jax.random.fold_in(jax.random.key(seed), int(stream))


@dataclasses.dataclass(frozen=True)
class Phase:
  """One kind of training of a run.

  Attributes:
    name: its --mode, config section and metric prefix.
    description: how logs name it.
    checkpoints: the workdir folder of its periodic checkpoints (the phase
      table names these folders; runs/workdir.py the others).
    rng_stream: the stream its steps draw from (a RngStream, or a wing's
      number from FIRST_WING_STREAM on).
    step: the pure step function (see steps.py).
    has_teacher: whether the step takes a teacher's parameters.
    num_updates_field: config[name]'s field with its number of updates.
    dropout_section: the config section whose `dropout` its network uses.
    decay_field: config[name]'s field over which the learning rate decays
      to 0 (None: constant after warmup).
    guidance_embedding: whether its network takes a guidance strength w
      (unet.UNet's w-embedding).
    step_options: config -> the step's further static settings (e.g. a
      `condition` hook, see steps.py); None: none.
  """

  name: str
  description: str
  checkpoints: str
  rng_stream: int
  step: Callable
  has_teacher: bool
  num_updates_field: str
  dropout_section: str
  decay_field: str | None
  guidance_embedding: bool = False
  step_options: Callable[[ml_collections.ConfigDict], dict] | None = None

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

  def step_settings(self, config: ml_collections.ConfigDict) -> dict:
    """The step's static settings beyond steps.step_settings'."""
    return {} if self.step_options is None else self.step_options(config)


TEACHER = Phase(
    name='train',
    description='teacher training',
    checkpoints='teacher',
    rng_stream=RngStream.TRAIN,
    step=steps.train_step,
    has_teacher=False,
    num_updates_field='num_steps',
    dropout_section='model',
    decay_field=None,
)
DISTILL = Phase(
    name='distill',
    description='distillation',
    checkpoints='distill',
    rng_stream=RngStream.DISTILL,
    step=steps.distill_step,
    has_teacher=True,
    num_updates_field='steps_per_round',
    dropout_section='distill',
    decay_field='steps_per_round',
)
PHASES = (TEACHER, DISTILL)

# What may change to rescue a run that diverged, in every phase: it changes
# the training from the step it resumes at, so the workdir records it.
RECOVERY_FIELDS = (
    'learning_rate',
    'skip_nonfinite_updates',
    'max_skipped_fraction',
)


def recovery_changes(table: tuple = PHASES) -> tuple:
  """The fields a workdir accepts changed on resume: RECOVERY_FIELDS of
  every phase of `table`."""
  return tuple(
      f'{phase.name}.{field}' for phase in table for field in RECOVERY_FIELDS
  )


def get(name: str, table: tuple = PHASES) -> Phase:
  """The phase of `table` called `name` (in PHASES: 'train' | 'distill')."""
  for phase in table:
    if phase.name == name:
      return phase
  raise ValueError(
      f'Unknown phase {name!r}; choose one of {tuple(p.name for p in table)}.'
  )
