"""The run's phases: teacher training, progressive distillation, sampling.

Each entry point takes (config, workdir), resumes from whatever the workdir
holds, and can be called from a notebook as well as from `main.py`. A mode
(`--mode`) is a sequence of phase functions and the checks of what they
start from (`MODES`); every phase function takes the `Run` and trains
through training_loop.train, with the phases of the run's wing
(`run.wing`). `run_mode` runs a table of modes with a wing: by default the
core's; the guided wing (diffusion_distillation/guided/pipeline.py) passes
its own, built on these functions.
"""

import dataclasses
import functools
import os
import time
from collections.abc import Callable

import jax
import ml_collections
from absl import logging

from diffusion_distillation.data import datasets
from diffusion_distillation.evaluation import loop as evaluation_loop
from diffusion_distillation.runs import config_checks
from diffusion_distillation.runs import run as run_lib
from diffusion_distillation.runs import workdir as workdir_lib
from diffusion_distillation.runs import workdir_lock
from diffusion_distillation.runs.run import Run
from diffusion_distillation.training import phases
from diffusion_distillation.training import trainer as trainer_lib
from diffusion_distillation.training import training_loop
from diffusion_distillation.utils import errors
from diffusion_distillation.utils import files


def round_step_counts(config: ml_collections.ConfigDict) -> list:
  """Student step counts, one per round: start/2, start/4, ..., end."""
  distill = config.distill
  config_checks.check_round_range(
      distill.start_num_steps, distill.end_num_steps
  )
  counts, n = [], distill.start_num_steps
  while n > distill.end_num_steps:
    n //= 2
    counts.append(n)
  return counts


# Students of this many sampling steps or fewer take
# distill.final_rounds_updates_multiplier times the updates.
FINAL_ROUNDS_MAX_STEPS = 2


def round_updates(config: ml_collections.ConfigDict) -> list:
  """Optimizer updates of each round, aligned with round_step_counts."""
  distill = config.distill
  return [
      distill.steps_per_round
      * (
          distill.final_rounds_updates_multiplier
          if n <= FINAL_ROUNDS_MAX_STEPS
          else 1
      )
      for n in round_step_counts(config)
  ]


def train_teacher(run: Run):
  """Trains the continuous-time teacher; saves it as models/0."""
  config = run.config
  grid_name = f'grid_teacher_{config.sample.teacher_num_steps}'
  if 0 in run.workdir.models():
    logging.info('Teacher already trained in %s', run.workdir.path)
    _write_missing_grid(run, 0, config.sample.teacher_num_steps, grid_name)
    return
  phase = run.wing.phase(phases.TEACHER.name)
  trainer = trainer_lib.build(config, phase, run.mesh)
  trained = run.train(
      training_loop.whole_phase(
          phase,
          config,
          run.workdir.checkpoints_dir(phase.checkpoints),
          fresh_note='the teacher would start from its initialisation',
      ),
      trainer,
      start_params=lambda: trainer.init_params(
          phases.stream_key(config.seed, phases.RngStream.INIT)
      ),
  )
  run.finish_phase(
      'Teacher training',
      trained,
      save=functools.partial(run.workdir.save_model, 0),
      meta={'trained_steps': int(trained.state.step)},
      step=int(trained.state.step),
      minutes_key='train/minutes',
      grid_steps=config.sample.teacher_num_steps,
      grid_name=grid_name,
  )


def _write_missing_grid(run: Run, model_steps: int, num_steps: int, name):
  """The sample grid of a model saved by a run that was killed before it
  could write the grid."""
  grid = files.as_path(run.workdir.samples_dir) / f'{name}.png'
  if not grid.exists():
    run.write_samples(
        run.workdir.load(model_steps), num_steps=num_steps, name=name
    )


def _first_teacher(run: Run, own_teacher: Callable):
  """The first round's teacher: distill.teacher_checkpoint, else
  `own_teacher()`."""
  config = run.config
  path = config.distill.teacher_checkpoint
  if not path:
    return own_teacher()
  params, meta = run.workdir.load_from(path, source='teacher checkpoint')
  teacher_steps = meta.get('num_sample_steps', 0)
  if teacher_steps and teacher_steps != config.distill.start_num_steps:
    raise errors.InputError(
        f'The teacher at {path} samples in {teacher_steps} steps but '
        f'distill.start_num_steps={config.distill.start_num_steps}; set '
        f'--config.distill.start_num_steps={teacher_steps}.'
    )
  return params


def distill(run: Run, *, own_teacher: Callable | None = None):
  """Progressive distillation, round by round; saves each student as
  models/<N> and resumes mid-round from its checkpoints.

  own_teacher: () -> the first round's teacher when
    distill.teacher_checkpoint is empty; default models/0 (the guided wing
    passes its stage-one model).
  """
  own_teacher = own_teacher or run.workdir.load_teacher
  student_step_counts = round_step_counts(run.config)
  done = run.workdir.models()
  if all(n in done for n in student_step_counts):
    logging.info('Distillation already finished in %s', run.workdir.path)
  trainers = {}  # by updates per round: the learning rate decays over them
  for round_index, student_steps in enumerate(student_step_counts):
    if student_steps in done:
      name = f'grid_{student_steps}'
      _write_missing_grid(run, student_steps, student_steps, name)
      continue
    updates = round_updates(run.config)[round_index]
    if updates not in trainers:
      trainers[updates] = trainer_lib.build(
          run.config,
          run.wing.phase(phases.DISTILL.name),
          run.mesh,
          decay_steps=updates,
      )
    if round_index == 0:
      teacher = _first_teacher(run, own_teacher)
    else:
      teacher = run.workdir.load(
          student_step_counts[round_index - 1], source='previous round'
      )
    _distill_round(run, trainers[updates], teacher, round_index)


def _distill_round(run: Run, trainer, teacher, round_index: int):
  """Round `round_index`: the student of round_step_counts[round_index]
  steps learns two DDIM steps of `teacher` in one; saved as models/<its
  steps>."""
  counts, all_updates = round_step_counts(run.config), round_updates(run.config)
  student_steps, num_rounds = counts[round_index], len(counts)
  updates = all_updates[round_index]
  offset = sum(all_updates[:round_index])
  teacher_name = 'teacher'
  if round_index:
    teacher_name = os.path.join(run.workdir.models_dir, str(2 * student_steps))
  phase = trainer.phase
  leg = training_loop.Leg(
      phase=phase,
      name=f'the {student_steps}-step round',
      directory=run.workdir.checkpoints_dir(phase.checkpoints),
      num_updates=updates,
      meta={'phase': phase.name, 'num_sample_steps': student_steps},
      fresh_note=f'the round would start again from {teacher_name}',
      step_offset=offset,
      total_updates=sum(all_updates),
  )
  logging.info(
      'Round %d/%d: %d -> %d sampling steps',
      round_index + 1,
      num_rounds,
      2 * student_steps,
      student_steps,
  )
  trained = run.train(
      leg, trainer, start_params=lambda: teacher, teacher=teacher
  )
  run.finish_phase(
      f'Round {round_index + 1}/{num_rounds} ({student_steps} steps)',
      trained,
      save=functools.partial(run.workdir.save_model, student_steps),
      meta={'distill_steps': updates},
      step=offset + updates,
      minutes_key='distill/round_minutes',
      scalars={'distill/num_sample_steps': student_steps},
      grid_steps=student_steps,
      grid_name=f'grid_{student_steps}',
  )


def sample(run: Run, num_samples: int | None = None) -> dict:
  """Writes samples_<N>.npz (+ .png) for every model in the workdir.

  The teacher (models/0) samples with sample.teacher_num_steps and
  sample.sampler, and writes samples_<N>_teacher.npz; each student uses its
  own N steps with DDIM. Returns {name: paths}.
  """
  settings, todo = run.config.sample, []
  for n in run.workdir.models():
    load = functools.partial(run.workdir.load, n)
    if n == 0:
      name = f'samples_{settings.teacher_num_steps}_teacher'
      todo.append(
          ModelSamples(name, load, settings.teacher_num_steps, settings.sampler)
      )
    else:
      todo.append(ModelSamples(f'samples_{n}', load, n, 'ddim'))
  return write_model_samples(run, todo, num_samples=num_samples)


@dataclasses.dataclass(frozen=True)
class ModelSamples:
  """The samples of one model: their file name, the model's loader
  (() -> params), and how they are drawn."""

  name: str
  load: Callable
  num_steps: int
  method: str


def write_model_samples(
    run: Run, todo: list, *, num_samples: int | None
) -> dict:
  """Writes each ModelSamples of `todo`, loading one model at a time;
  returns {name: paths} (empty off process 0). A workdir without a model
  (an empty `todo`) is refused."""
  if not todo:
    raise run.workdir.no_models()
  written = {}
  for entry in todo:
    paths = run.write_samples(
        entry.load(),
        num_steps=entry.num_steps,
        name=entry.name,
        method=entry.method,
        num_samples=num_samples,
    )
    if paths:
      written[entry.name] = paths
  return written


# ----------------------------------------------------------------------------
# Modes: what each runs, and the checks of what it starts from.


def needs_training_data(run: Run):
  if run.config.dataset.name not in datasets.IN_MEMORY_DATASETS:
    from diffusion_distillation.data import input_pipeline

    input_pipeline.check_prepared(run.config.dataset)


def rounds_need_own_teacher(run: Run) -> bool:
  """Whether the rounds still to train start from a model of this workdir:
  some round is not done and distill.teacher_checkpoint (checked to exist
  when given) is empty."""
  teacher = run.config.distill.teacher_checkpoint
  if teacher:
    workdir_lib.resolve_model_path(teacher)
    return False
  models = run.workdir.models()
  return not all(n in models for n in round_step_counts(run.config))


def _needs_first_teacher(run: Run):
  """Distillation starts from distill.teacher_checkpoint or models/0,
  unless every round is done."""
  if rounds_need_own_teacher(run) and 0 not in run.workdir.models():
    raise run.workdir.missing_teacher()


def needs_models(run: Run):
  if not run.workdir.models():
    raise run.workdir.no_models()


def _can_evaluate(run: Run):
  evaluation_loop.check_can_evaluate(run.config, run.workdir)


@dataclasses.dataclass(frozen=True)
class Mode:
  """A --mode: the phase functions it runs in order, and the checks that
  what they start from exists (run before anything is written)."""

  runs: tuple
  needs: tuple


TRAINING = (needs_training_data,)
MODES = {
    'train': Mode((train_teacher,), TRAINING),
    'distill': Mode((distill,), TRAINING + (_needs_first_teacher,)),
    'sample': Mode((sample,), (needs_models,)),
    'eval': Mode((evaluation_loop.evaluate,), (_can_evaluate,)),
    'all': Mode((train_teacher, distill, sample), TRAINING),
}


def preflight(run: Run, mode: Mode):
  """Checks what `mode` needs before anything is written.

  Raises:
    InputError: the workdir is a file, the training data is not prepared,
      or the models the mode starts from do not exist.
  """
  path = files.as_path(run.workdir.path)
  if path.exists() and not path.is_dir():
    raise errors.InputError(
        f'--workdir={run.workdir.path} is a file; give a directory (new or a '
        "run's)."
    )
  for check in mode.needs:
    check(run)


def run_mode(
    config: ml_collections.ConfigDict,
    workdir: str,
    mode: str,
    *,
    modes: dict | None = None,
    wing: run_lib.Wing = run_lib.CORE,
):
  """Runs `mode` of `modes` (default MODES: 'train' | 'distill' |
  'sample' | 'eval' | 'all', which is train, distill and sample) in
  `workdir`, with the phases, checks and sampler of `wing`. Returns
  {phase function: seconds}."""
  modes = MODES if modes is None else modes
  if mode not in modes:
    raise errors.InputError(
        f'Unknown --mode={mode!r}; choose one of {", ".join(modes)}.'
    )
  run = Run(config, workdir, wing=wing)
  preflight(run, modes[mode])
  timings = {}
  with workdir_lock.WorkdirLock(workdir):
    # Logged once every input is checked: bad input stays one line.
    logging.info(
        'JAX process %d/%d, local devices: %s',
        jax.process_index(),
        jax.process_count(),
        jax.local_devices(),
    )
    run.record_config()
    try:
      for phase in modes[mode].runs:
        start = time.time()
        phase(run)
        timings[phase.__name__] = time.time() - start
        logging.info('%s took %.1f s', phase.__name__, timings[phase.__name__])
    finally:
      if run.has_writer:
        run.writer.flush()
  return timings
