"""The phases of guided distillation (Meng et al. 2023) that differ from the
unguided ones: stage one (`guide`) and sampling. The guided teacher trains
with `pipeline.train_teacher` and stage two is `pipeline.distill`, whose
step samples w per example and whose first teacher is the stage-one model.
Where each model lives: workdir.py.

Each function takes a `pipeline.Run`.
"""

import time

from absl import logging

from diffusion_distillation import network as network_lib
from diffusion_distillation import phases
from diffusion_distillation import trainer as trainer_lib
from diffusion_distillation import training_loop
from diffusion_distillation import workdir as workdir_lib


def guide(run):
  """Stage one: trains the w-conditioned student against the guided
  teacher at w ~ U[w_min, w_max] in continuous time, starting from the
  teacher's parameters plus a w-embedding whose output is zero; saves it
  as models_guide/0 and resumes from guide/ checkpoints."""
  config = run.config
  if run.store.has_stage_one():
    logging.info('Stage one already done in %s', run.workdir)
    return
  teacher = run.store.load_teacher()
  trainer = trainer_lib.build(config, phases.GUIDE, run.mesh)
  start = time.time()
  state, last = run.train(
      training_loop.whole_phase(
          phases.GUIDE,
          config,
          run.store.checkpoints_dir(phases.GUIDE.checkpoints),
          fresh_note='stage one would start again from the teacher',
      ),
      trainer,
      start_params=lambda: network_lib.add_guidance_embedding(
          teacher,
          trainer.init_params(
              phases.stream_key(config.seed, phases.RngStream.GUIDE)
          ),
      ),
      teacher=teacher,
  )
  run.store.save_stage_one(
      state.ema_params,
      {'guide_steps': int(state.step), 'seconds': time.time() - start},
  )
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
  config, store = run.config, run.store
  w = config.sample.guidance
  todo = []
  models = store.models()
  if 0 in models:
    steps = config.sample.teacher_num_steps
    teacher = (store.load_teacher, steps, config.sample.sampler)
    todo.append((f'samples_{steps}_teacher_w{w:g}', *teacher))
  if store.has_stage_one():
    steps = config.distill.start_num_steps
    stage_one = (store.load_stage_one, steps, 'ddim')
    todo.append((f'samples_{steps}_guide_w{w:g}', *stage_one))
  for n in models:
    if n > 0:
      todo.append((f'samples_{n}_w{w:g}', lambda n=n: store.load(n), n, 'ddim'))
  if not todo:
    raise workdir_lib.no_models(run.workdir, guided=True)
  written = {}
  for name, load, steps, method in todo:
    paths = run.write_samples(
        load(),
        num_steps=steps,
        name=name,
        method=method,
        num_samples=num_samples,
    )
    if paths:
      written[name] = paths
  return written
