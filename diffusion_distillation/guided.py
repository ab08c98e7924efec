"""The phases of guided distillation (Meng et al. 2023) that differ from the
unguided ones: stage one (`guide`), the first teacher of stage two, and
sampling. The guided teacher trains with `pipeline.train_teacher` and stage
two is `pipeline.distill`, whose step samples w per example.

Workdir of a guided config, beside the usual layout (checkpoints.py):
  models/0/            the guided teacher (a null class, no w-embedding)
  guide/<step>/        periodic stage-one TrainStates
  models_guide/0/      the stage-one model: w-conditioned, continuous time,
                       the first teacher of stage two (kept forever)
  models/<N>/          the w-conditioned N-step students of stage two

Each function takes a `pipeline.Run`.
"""

import os
import time

import jax
import orbax.checkpoint as ocp
from absl import logging

from diffusion_distillation import checkpoints
from diffusion_distillation import errors
from diffusion_distillation import files
from diffusion_distillation import network as network_lib
from diffusion_distillation import trainer as trainer_lib

STAGE_ONE_DIR = 'models_guide'


def stage_one_dir(workdir: str) -> str:
  return os.path.join(workdir, STAGE_ONE_DIR)


def has_stage_one_model(workdir: str) -> bool:
  return (files.as_path(stage_one_dir(workdir)) / '0').is_dir()


def stage_one_meta(workdir: str) -> dict:
  """The JSON metadata saved with the stage-one model (e.g. 'seconds')."""
  mngr = checkpoints.manager(stage_one_dir(workdir), max_to_keep=None)
  meta = mngr.restore(0, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
      'meta'
  ]
  mngr.close()
  return meta


def teacher_abstract_params(run):
  """The guided teacher's parameter shapes (no w-embedding), replicated."""
  network = network_lib.build_network(
      run.config, dropout=0.0, guidance_embedding=False
  )
  return _replicated_shapes(
      run, network_lib.abstract_params(network, run.config)
  )


def _replicated_shapes(run, tree):
  return jax.tree_util.tree_map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=run.replicated),
      tree,
  )


def load_teacher(run):
  """The guided teacher, models/0."""
  if 0 not in checkpoints.saved_models(run.workdir):
    raise errors.InputError(
        f'Missing guided teacher: {run.workdir}/models/0 does not exist; run '
        '--mode=train first.'
    )
  params, _ = checkpoints.load_model(
      run.workdir,
      teacher_abstract_params(run),
      num_sample_steps=0,
      sharding=run.replicated,
      source='guided teacher',
  )
  return params


def load_stage_one(run):
  """The stage-one model (w-conditioned, continuous time)."""
  if not has_stage_one_model(run.workdir):
    raise errors.InputError(
        f'Missing stage-one model: {stage_one_dir(run.workdir)}/0 does not '
        'exist; run --mode=guide first, or set '
        '--config.distill.teacher_checkpoint to a w-conditioned model.'
    )
  params, _ = checkpoints.load_model(
      os.path.join(stage_one_dir(run.workdir), '0'),
      run.abstract_params(),
      sharding=run.replicated,
      source='stage-one model',
  )
  return params


def first_teacher(run):
  """Stage two's first teacher: the stage-one model, sampled in
  distill.start_num_steps DDIM steps."""
  return load_stage_one(run)


def guide(run):
  """Stage one: trains the w-conditioned student against the guided
  teacher at w ~ U[w_min, w_max] in continuous time, starting from the
  teacher's parameters plus a w-embedding whose output is zero; saves it
  as models_guide/0 and resumes from guide/ checkpoints."""
  config, workdir = run.config, run.workdir
  if has_stage_one_model(workdir):
    logging.info('Stage one already done in %s', workdir)
    return
  teacher = load_teacher(run)
  trainer = trainer_lib.build(config, 'guide', run.mesh)
  state, last, start = run.train_continuous_phase(
      section='guide',
      directory=os.path.join(workdir, 'guide'),
      trainer=trainer,
      fresh_params=lambda: network_lib.add_guidance_embedding(
          teacher,
          trainer.init_params(
              trainer_lib.stream_key(config.seed, trainer_lib.RngStream.GUIDE)
          ),
      ),
      run_step=lambda s, b: trainer.update(s, b, teacher),
      name='stage one',
      fresh_note='stage one would start again from the teacher',
  )
  models = checkpoints.manager(stage_one_dir(workdir), max_to_keep=None)
  checkpoints.save(
      models,
      0,
      {'params': state.ema_params},
      {
          'num_sample_steps': 0,
          'guide_steps': int(state.step),
          'seconds': time.time() - start,
      },
  )
  models.close()
  run.writer.write_scalars(
      int(state.step), {'guide/minutes': (time.time() - start) / 60}
  )
  logging.info(
      'Stage one done in %.1f min, final loss %.4g',
      (time.time() - start) / 60,
      last.get('loss', float('nan')),
  )
  num_steps = config.distill.start_num_steps
  run.write_samples(
      state.ema_params,
      num_steps=num_steps,
      name=f'grid_guide_{num_steps}',
      step=int(state.step),
  )


def sample(run, num_samples: int | None = None) -> dict:
  """Writes samples at w = sample.guidance of every model of a guided
  workdir: the guided teacher (sample.teacher_num_steps, sample.sampler,
  two network evaluations per step), the stage-one model
  (distill.start_num_steps DDIM steps) and each student (its N DDIM steps).
  Files: samples_<steps>_teacher_w<w>, samples_<steps>_guide_w<w>,
  samples_<N>_w<w> (.npz + .png). Returns {name: paths}."""
  config, workdir = run.config, run.workdir
  w = config.sample.guidance
  todo = []
  models = checkpoints.saved_models(workdir)
  if 0 in models:
    steps = config.sample.teacher_num_steps
    todo.append((f'samples_{steps}_teacher_w{w:g}', load_teacher, steps, None))
  if has_stage_one_model(workdir):
    steps = config.distill.start_num_steps
    todo.append(
        (f'samples_{steps}_guide_w{w:g}', load_stage_one, steps, 'ddim')
    )
  for n in models:
    if n > 0:
      load = lambda run, n=n: checkpoints.load_model(
          run.workdir,
          run.abstract_params(),
          num_sample_steps=n,
          sharding=run.replicated,
          source='model',
      )[0]
      todo.append((f'samples_{n}_w{w:g}', load, n, 'ddim'))
  if not todo:
    raise errors.InputError(
        f'No models in {workdir}/models: run --mode=train (then guide and '
        'distill) first.'
    )
  written = {}
  for name, load, steps, method in todo:
    paths = run.write_samples(
        load(run),
        num_steps=steps,
        name=name,
        method=method or config.sample.sampler,
        num_samples=num_samples,
    )
    if paths:
      written[name] = paths
  return written
