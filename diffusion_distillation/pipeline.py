"""The run's phases: teacher training, progressive distillation, sampling.

Each entry point takes (config, workdir), resumes from whatever the workdir
holds, and can be called from a notebook as well as from `main.py`. A mode
(`--mode`) is a sequence of phase functions and the checks of what they
start from (`MODES`); every phase function takes the `Run` and trains
through training_loop.train.
"""

import dataclasses
import os
import time

import jax
import ml_collections
from absl import logging

from diffusion_distillation import config_checks
from diffusion_distillation import data
from diffusion_distillation import errors
from diffusion_distillation import evaluation
from diffusion_distillation import files
from diffusion_distillation import guided
from diffusion_distillation import guided_evaluation
from diffusion_distillation import network as network_lib
from diffusion_distillation import phases
from diffusion_distillation import trainer as trainer_lib
from diffusion_distillation import training_loop
from diffusion_distillation import workdir as workdir_lib
from diffusion_distillation import workdir_lock
from diffusion_distillation.run import Run


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
  if 0 in run.store.models():
    logging.info('Teacher already trained in %s', run.workdir)
    _write_missing_grid(run, 0, config.sample.teacher_num_steps, grid_name)
    return
  trainer = trainer_lib.build(config, phases.TEACHER, run.mesh)
  start = time.time()
  state, _ = run.train(
      training_loop.whole_phase(
          phases.TEACHER,
          config,
          run.store.checkpoints_dir(phases.TEACHER.checkpoints),
          fresh_note='the teacher would start from its initialisation',
      ),
      trainer,
      start_params=lambda: trainer.init_params(
          phases.stream_key(config.seed, phases.RngStream.INIT)
      ),
  )
  # 'seconds': this process's training time (a resumed run's last leg).
  run.store.save_model(
      0,
      state.ema_params,
      {'trained_steps': int(state.step), 'seconds': time.time() - start},
  )
  run.writer.write_scalars(
      int(state.step), {'train/minutes': (time.time() - start) / 60}
  )
  run.write_samples(
      state.ema_params,
      num_steps=config.sample.teacher_num_steps,
      name=grid_name,
      step=int(state.step),
  )


def _write_missing_grid(run: Run, model_steps: int, num_steps: int, name):
  """The sample grid of a model saved by a run that was killed before it
  could write the grid."""
  grid = files.as_path(workdir_lib.samples_dir(run.workdir)) / f'{name}.png'
  if not grid.exists():
    run.write_samples(
        run.store.load(model_steps), num_steps=num_steps, name=name
    )


def _first_teacher(run: Run):
  """The first round's teacher: distill.teacher_checkpoint, else models/0
  (for a guided config: the stage-one model)."""
  config = run.config
  path = config.distill.teacher_checkpoint
  if not path:
    if network_lib.is_guided(config):
      return run.store.load_stage_one()
    return run.store.load_teacher()
  params, meta = run.store.load_from(path, source='teacher checkpoint')
  teacher_steps = meta.get('num_sample_steps', 0)
  if teacher_steps and teacher_steps != config.distill.start_num_steps:
    raise errors.InputError(
        f'The teacher at {path} samples in {teacher_steps} steps but '
        f'distill.start_num_steps={config.distill.start_num_steps}; set '
        f'--config.distill.start_num_steps={teacher_steps}.'
    )
  return params


def distill(run: Run):
  """Progressive distillation, round by round; saves each student as
  models/<N> and resumes mid-round from its checkpoints."""
  student_step_counts = round_step_counts(run.config)
  done = run.store.models()
  if all(n in done for n in student_step_counts):
    logging.info('Distillation already finished in %s', run.workdir)
  trainers = {}  # by updates per round: the learning rate decays over them
  for round_index, student_steps in enumerate(student_step_counts):
    if student_steps in done:
      name = f'grid_{student_steps}'
      _write_missing_grid(run, student_steps, student_steps, name)
      continue
    updates = round_updates(run.config)[round_index]
    if updates not in trainers:
      trainers[updates] = trainer_lib.build(
          run.config, phases.DISTILL, run.mesh, decay_steps=updates
      )
    if round_index == 0:
      teacher = _first_teacher(run)
    else:
      teacher = run.store.load(
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
    teacher_name = os.path.join(
        workdir_lib.models_dir(run.workdir), str(2 * student_steps)
    )
  leg = training_loop.Leg(
      phase=phases.DISTILL,
      name=f'the {student_steps}-step round',
      directory=run.store.checkpoints_dir(phases.DISTILL.checkpoints),
      num_updates=updates,
      meta={'phase': phases.DISTILL.name, 'num_sample_steps': student_steps},
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
  start = time.time()
  state, last = run.train(
      leg, trainer, start_params=lambda: teacher, teacher=teacher
  )
  minutes = (time.time() - start) / 60
  run.store.save_model(
      student_steps,
      state.ema_params,
      {'distill_steps': updates, 'seconds': time.time() - start},
  )
  run.writer.write_scalars(
      offset + updates,
      {
          'distill/round_minutes': minutes,
          'distill/num_sample_steps': student_steps,
      },
  )
  logging.info(
      'Round %d/%d (%d steps) done in %.1f min, final loss %.4g',
      round_index + 1,
      num_rounds,
      student_steps,
      minutes,
      last.get('loss', float('nan')),
  )
  run.write_samples(
      state.ema_params,
      num_steps=student_steps,
      name=f'grid_{student_steps}',
      step=offset + updates,
  )


def sample(run: Run, num_samples: int | None = None) -> dict:
  """Writes samples_<N>.npz (+ .png) for every model in the workdir.

  The teacher (models/0) samples with sample.teacher_num_steps and
  sample.sampler, and writes samples_<N>_teacher.npz; each student uses its
  own N steps with DDIM. Returns {name: paths}.
  """
  config = run.config
  models = run.store.models()
  if not models:
    raise workdir_lib.no_models(run.workdir)
  written = {}
  for model_steps in models:
    if model_steps == 0:
      num_steps = config.sample.teacher_num_steps
      method, name = config.sample.sampler, f'samples_{num_steps}_teacher'
    else:
      num_steps, method = model_steps, 'ddim'
      name = f'samples_{model_steps}'
    paths = run.write_samples(
        run.store.load(model_steps),
        num_steps=num_steps,
        name=name,
        method=method,
        num_samples=num_samples,
    )
    if paths:
      written[name] = paths
  return written


# ----------------------------------------------------------------------------
# Modes: what each runs, and the checks of what it starts from.


def _needs_training_data(run: Run):
  if run.config.dataset.name not in data.IN_MEMORY_DATASETS:
    from diffusion_distillation import input_pipeline

    input_pipeline.check_prepared(run.config.dataset)


def _needs_guided_teacher(run: Run):
  if 0 not in run.store.models() and not run.store.has_stage_one():
    raise workdir_lib.missing_guided_teacher(run.workdir)


def _needs_first_teacher(run: Run):
  """Distillation starts from distill.teacher_checkpoint, models/0 or (a
  guided config) the stage-one model, unless every round is done."""
  models = run.store.models()
  teacher = run.config.distill.teacher_checkpoint
  if teacher:
    workdir_lib.resolve_model_path(teacher)
  elif not all(n in models for n in round_step_counts(run.config)):
    if network_lib.is_guided(run.config) and not run.store.has_stage_one():
      raise workdir_lib.missing_stage_one(run.workdir)
    if not network_lib.is_guided(run.config) and 0 not in models:
      raise workdir_lib.missing_teacher(run.workdir)


def _needs_models(run: Run):
  if not run.store.models():
    raise workdir_lib.no_models(run.workdir)


def _can_evaluate(run: Run):
  guided_config = network_lib.is_guided(run.config)
  module = guided_evaluation if guided_config else evaluation
  module.check_can_evaluate(run.config, run.workdir)


@dataclasses.dataclass(frozen=True)
class Mode:
  """A --mode: the phase functions it runs in order, and the checks that
  what they start from exists (run before anything is written)."""

  runs: tuple
  needs: tuple


_TRAINING = (_needs_training_data,)
MODES = {
    'train': Mode((train_teacher,), _TRAINING),
    'distill': Mode((distill,), _TRAINING + (_needs_first_teacher,)),
    'sample': Mode((sample,), (_needs_models,)),
    'eval': Mode((evaluation.evaluate,), (_can_evaluate,)),
    'all': Mode((train_teacher, distill, sample), _TRAINING),
}
# Guided configs (a guidance section): 'guide' is stage one, between the
# teacher and the rounds; see guided.py.
GUIDED_MODES = {
    'train': MODES['train'],
    'guide': Mode((guided.guide,), _TRAINING + (_needs_guided_teacher,)),
    'distill': MODES['distill'],
    'sample': Mode((guided.sample,), (_needs_models,)),
    'eval': Mode((guided_evaluation.evaluate,), (_can_evaluate,)),
    'all': Mode(
        (train_teacher, guided.guide, distill, guided.sample), _TRAINING
    ),
}


def preflight(run: Run, mode: Mode):
  """Checks what `mode` needs before anything is written.

  Raises:
    InputError: the workdir is a file, the training data is not prepared,
      or the models the mode starts from do not exist.
  """
  path = files.as_path(run.workdir)
  if path.exists() and not path.is_dir():
    raise errors.InputError(
        f"--workdir={run.workdir} is a file; give a directory (new or a run's)."
    )
  for check in mode.needs:
    check(run)


def run_mode(config: ml_collections.ConfigDict, workdir: str, mode: str):
  """Runs `mode` ('train' | 'distill' | 'sample' | 'eval' | 'all', and
  'guide' for guided configs) in `workdir`; 'all' is train, (guide,)
  distill and sample. Returns {phase: seconds}."""
  is_guided = network_lib.is_guided(config)
  modes = GUIDED_MODES if is_guided else MODES
  if mode == 'guide' and not is_guided:
    raise errors.InputError(
        '--mode=guide is stage one of guided distillation: it needs a guided '
        'config (one with a guidance section), e.g. configs/digits_guided.py.'
    )
  if mode not in modes:
    raise errors.InputError(
        f'Unknown --mode={mode!r}; choose one of {", ".join(modes)}.'
    )
  run = Run(config, workdir)
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
