"""Guided distillation's runs (Meng et al. 2023): the phase functions that
differ from the core's, the guided modes, `WING` and `run_mode`.

The guided teacher trains with the core's `pipeline.train_teacher` and
stage two is `pipeline.distill`, both with the guided phase table
(phases.py: labels dropped, w drawn per example); stage one (`guide`),
stage two's first teacher (the stage-one model) and sampling at w are
here. Where each model lives: workdir.py (the wing's) and runs/workdir.py.

Each phase function takes a `run.Run` of the guided wing.
"""

import functools

import ml_collections
from absl import logging

from diffusion_distillation import network as network_lib
from diffusion_distillation import pipeline
from diffusion_distillation.guided import config_checks
from diffusion_distillation.guided import evaluation
from diffusion_distillation.guided import phases
from diffusion_distillation.guided import sampling
from diffusion_distillation.guided import workdir as guided_workdir
from diffusion_distillation.runs import run as run_lib
from diffusion_distillation.training import trainer as trainer_lib
from diffusion_distillation.training import training_loop
from diffusion_distillation.utils import errors


def guide(run):
  """Stage one: trains the w-conditioned student against the guided
  teacher at w ~ U[w_min, w_max] in continuous time, starting from the
  teacher's parameters plus a w-embedding whose output is zero; saves it
  as models_guide/0 and resumes from guide/ checkpoints."""
  config = run.config
  if run.workdir.has_stage_one():
    logging.info('Stage one already done in %s', run.workdir.path)
    return
  teacher = run.workdir.load_teacher()
  trainer = trainer_lib.build(config, phases.GUIDE, run.mesh)
  trained = run.train(
      training_loop.whole_phase(
          phases.GUIDE,
          config,
          run.workdir.checkpoints_dir(phases.GUIDE.checkpoints),
          fresh_note='stage one would start again from the teacher',
      ),
      trainer,
      start_params=lambda: network_lib.add_guidance_embedding(
          teacher,
          trainer.init_params(phases.stage_one_init_key(config.seed)),
      ),
      teacher=teacher,
  )
  num_steps = config.distill.start_num_steps
  run.finish_phase(
      'Stage one',
      trained,
      save=run.workdir.save_stage_one,
      meta={'guide_steps': int(trained.state.step)},
      step=int(trained.state.step),
      minutes_key='guide/minutes',
      grid_steps=num_steps,
      grid_name=f'grid_guide_{num_steps}',
  )


def distill(run):
  """Stage two: the core's rounds (pipeline.distill), the first from the
  stage-one model unless distill.teacher_checkpoint names another."""
  pipeline.distill(run, own_teacher=run.workdir.load_stage_one)


def sample(run, num_samples: int | None = None) -> dict:
  """Writes samples at w = sample.guidance of every model of a guided
  workdir: the guided teacher (sample.teacher_num_steps, sample.sampler,
  two network evaluations per step), the stage-one model
  (distill.start_num_steps DDIM steps) and each student (its N DDIM steps).
  Files: samples_<steps>_teacher_w<w>, samples_<steps>_guide_w<w>,
  samples_<N>_w<w> (.npz + .png). Returns {name: paths}."""
  config, workdir = run.config, run.workdir
  w, todo = config.sample.guidance, []
  models = workdir.models()
  if 0 in models:
    steps = config.sample.teacher_num_steps
    todo.append(
        pipeline.ModelSamples(
            f'samples_{steps}_teacher_w{w:g}',
            workdir.load_teacher,
            steps,
            config.sample.sampler,
        )
    )
  if workdir.has_stage_one():
    steps = config.distill.start_num_steps
    todo.append(
        pipeline.ModelSamples(
            f'samples_{steps}_guide_w{w:g}',
            workdir.load_stage_one,
            steps,
            'ddim',
        )
    )
  for n in models:
    if n > 0:
      load = functools.partial(workdir.load, n)
      todo.append(pipeline.ModelSamples(f'samples_{n}_w{w:g}', load, n, 'ddim'))
  return pipeline.write_model_samples(run, todo, num_samples=num_samples)


# ----------------------------------------------------------------------------
# Modes: 'guide' is stage one, between the teacher and the rounds.


def _needs_guided_teacher(run):
  if 0 not in run.workdir.models() and not run.workdir.has_stage_one():
    raise run.workdir.missing_teacher()


def _needs_stage_one(run):
  """Stage two starts from distill.teacher_checkpoint or the stage-one
  model, unless every round is done."""
  if pipeline.rounds_need_own_teacher(run) and not run.workdir.has_stage_one():
    raise run.workdir.missing_stage_one()


def _can_evaluate(run):
  evaluation.check_can_evaluate(run.config, run.workdir)


_TRAINING = pipeline.TRAINING
MODES = {
    'train': pipeline.MODES['train'],
    'guide': pipeline.Mode((guide,), _TRAINING + (_needs_guided_teacher,)),
    'distill': pipeline.Mode((distill,), _TRAINING + (_needs_stage_one,)),
    'sample': pipeline.Mode((sample,), (pipeline.needs_models,)),
    'eval': pipeline.Mode((evaluation.evaluate,), (_can_evaluate,)),
    'all': pipeline.Mode(
        (pipeline.train_teacher, guide, distill, sample), _TRAINING
    ),
}

WING = run_lib.Wing(
    phases=phases.PHASES,
    check_config=config_checks.check_config,
    sampler=sampling.GuidedSampler,
    sections=('guidance', 'guide'),
    workdir=guided_workdir.GuidedWorkdir,
)


def run_mode(config: ml_collections.ConfigDict, workdir: str, mode: str):
  """Runs `mode` ('train' | 'guide' | 'distill' | 'sample' | 'eval' |
  'all', which is train, guide, distill and sample) of a guided config in
  `workdir`. Returns {phase function: seconds}."""
  if not network_lib.is_guided(config):
    what = 'The guided wing'
    if mode == 'guide':
      what = '--mode=guide is stage one of guided distillation: it'
    raise errors.InputError(
        f'{what} needs a guided config (one with a guidance section), e.g. '
        'configs/digits_guided.py.'
    )
  return pipeline.run_mode(config, workdir, mode, modes=MODES, wing=WING)
