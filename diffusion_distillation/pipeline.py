"""The run loops: teacher training, progressive distillation, sampling.

Each entry point takes (config, workdir), resumes from whatever the workdir
holds, and can be called from a notebook as well as from `main.py`.
"""

import os
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from clu import metric_writers
from clu import periodic_actions

from diffusion_distillation import checkpoints
from diffusion_distillation import config_checks
from diffusion_distillation import data
from diffusion_distillation import evaluation
from diffusion_distillation import input_pipeline
from diffusion_distillation import sampling
from diffusion_distillation import steps
from diffusion_distillation import train_state as train_state_lib

MODES = ('train', 'distill', 'sample', 'eval', 'all')


def round_step_counts(config: ml_collections.ConfigDict) -> list:
  """Student step counts, one per round: start/2, start/4, ..., end."""
  distill = config.distill
  config_checks.check_round_range(distill.start_num_steps,
                                  distill.end_num_steps)
  counts, n = [], distill.start_num_steps
  while n > distill.end_num_steps:
    n //= 2
    counts.append(n)
  return counts


class Run:
  """What every phase of one run shares: config, workdir, mesh, writer."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               mesh=None, writer=None):
    self.mesh = mesh if mesh is not None else steps.make_mesh()
    self.config = config_checks.check_config(config, self.mesh.size)
    self.workdir = workdir
    checkpoints.guard_run_config(workdir, config)
    self.writer = writer or metric_writers.create_default_writer(
        workdir, just_logging=jax.process_index() > 0)
    self.replicated = steps.replicated(self.mesh)
    self._dataset = None
    self._sampler = None

  @property
  def dataset(self):
    """The training data: a data.Dataset (digits, in memory) or an
    input_pipeline.TfdsStream (tfds names)."""
    if self._dataset is None:
      name = self.config.dataset.name
      self._dataset = (data.load(name, 'train')
                       if name in data.IN_MEMORY_DATASETS
                       else input_pipeline.TfdsStream(self.config.dataset))
    return self._dataset

  def network(self, dropout: float):
    return train_state_lib.build_network(self.config, dropout=dropout)

  @property
  def sampler(self) -> sampling.Sampler:
    if self._sampler is None:
      self._sampler = sampling.Sampler(self.network(0.0), self.config,
                                       self.mesh)
    return self._sampler

  def abstract_state(self, network, optimizer):
    """The state's shapes, replicated over the mesh (for restoring)."""
    return jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                       sharding=self.replicated),
        train_state_lib.abstract_state(network, self.config, optimizer))

  def fresh_state(self, params, optimizer, num_sample_steps: int):
    """A new state whose buffers are its own (the step donates them),
    placed exactly as the step returns it: a scalar left on one device
    instead of replicated would make the second call compile again."""
    own = lambda tree: jax.tree_util.tree_map(
        lambda a: jnp.array(a, copy=True), tree)
    state = train_state_lib.create_state(own(params), optimizer,
                                         num_sample_steps=num_sample_steps)
    return steps.replicate(state.replace(ema_params=own(params)), self.mesh)

  def batch_at(self, section: str, step: int) -> dict:
    """The batch of optimizer steps [step, step + substeps); the loop asks
    for consecutive steps, which a tfds stream continues."""
    phase = self.config[section]
    where = dict(seed=self.config.seed, step=step,
                 batch_size=phase.batch_size, substeps=phase.substeps,
                 process_index=jax.process_index(),
                 process_count=jax.process_count())
    if isinstance(self.dataset, data.Dataset):
      images, labels = data.batch_for_step(self.dataset, **where)
    else:
      images, labels = self.dataset.batch_for_step(**where)
    return steps.device_batch(images, labels, self.mesh)

  def write_samples(self, params, *, num_steps: int, name: str,
                    sampler: str = 'ddim', num_samples: Optional[int] = None,
                    step: Optional[int] = None) -> Optional[dict]:
    """Samples with the configured seed and labels; writes <name>.npz/.png.

    With `step`, the grid also goes to the metric writer (TensorBoard).
    Returns the written paths on process 0, None elsewhere.
    """
    sample = self.config.sample
    num_samples = num_samples or sample.num_samples
    labels = sampling.sample_labels_for(self.config, num_samples)
    x = self.sampler.sample(params, num_steps=num_steps,
                            num_samples=num_samples, labels=labels,
                            seed=sample.seed, sampler=sampler)
    if jax.process_index() != 0:
      return None
    images = data.unit_interval_to_uint8(x)
    paths = sampling.write_samples(
        os.path.join(self.workdir, 'samples'), name, images, labels)
    if step is not None:
      self.writer.write_images(step, {
          f'samples/{name}': sampling.image_grid(images)[None]})
    logging.info('Wrote %s and %s', paths['npz'], paths['png'])
    return paths

  def loop(self, *, section: str, state, num_steps: int, run_step: Callable,
           save: Callable, step_offset: int = 0, total_steps: int = 0):
    """Runs `run_step` from state.step to `num_steps`, logging and saving.

    Args:
      section: 'train' or 'distill' (config section and metric prefix).
      state: TrainState to continue from.
      num_steps: optimizer steps in this phase (a multiple of substeps).
      run_step: (state, batch) -> (state, metrics).
      save: (state) -> None, a periodic checkpoint.
      step_offset: global step of this phase's step 0 (distillation rounds).
      total_steps: global steps of the whole phase, for the ETA.

    Returns:
      (state, the last logged metrics as floats).
    """
    phase, every = self.config[section], self.config.checkpoint
    report = periodic_actions.ReportProgress(
        num_train_steps=total_steps or num_steps, writer=self.writer,
        every_secs=30.0)
    step = int(state.step)
    last_save = time.time()
    logged = {}
    while step < num_steps:
      batch = self.batch_at(section, step_offset + step)
      state, metrics = run_step(state, batch)
      step += phase.substeps
      global_step = step_offset + step
      report(global_step)
      if step % self.config.log_every_steps < phase.substeps or (
          step >= num_steps):
        logged = {k: float(v) for k, v in jax.device_get(metrics).items()}
        steps.check_finite(logged, step, section,
                           phase.get('skip_nonfinite_updates', False))
        self.writer.write_scalars(global_step, {
            f'{section}/{k}': v for k, v in logged.items()})
      due_by_steps = every.every_steps and (
          step % every.every_steps < phase.substeps)
      due_by_time = time.time() - last_save >= every.every_secs
      if step < num_steps and (due_by_steps or due_by_time):
        save(state)
        last_save = time.time()
    return state, logged


def train_teacher(run: Run):
  """Trains the continuous-time teacher; saves it as models/0."""
  config, workdir = run.config, run.workdir
  if 0 in checkpoints.saved_models(workdir):
    logging.info('Teacher already trained in %s', workdir)
    return
  network = run.network(config.model.dropout)
  optimizer = train_state_lib.make_optimizer(config, 'train')
  mngr = checkpoints.manager(os.path.join(workdir, 'teacher'),
                             max_to_keep=config.checkpoint.max_to_keep)
  latest = mngr.latest_step()
  if latest is not None:
    state, _ = checkpoints.restore(
        mngr, latest, run.abstract_state(network, optimizer))
    logging.info('Resuming teacher training at step %d', latest)
  else:
    init = jax.jit(lambda rng: train_state_lib.init_params(network, config,
                                                           rng),
                   out_shardings=run.replicated)
    params = init(jax.random.fold_in(jax.random.key(config.seed), 0))
    state = run.fresh_state(params, optimizer, num_sample_steps=0)

  step_fn = steps.compile_train_step(
      steps.step_settings(config, 'train', network=network,
                          optimizer=optimizer), run.mesh)
  rng = steps.replicate(jax.random.fold_in(jax.random.key(config.seed), 1),
                        run.mesh)
  start = time.time()
  state, _ = run.loop(
      section='train', state=state, num_steps=config.train.num_steps,
      run_step=lambda s, b: step_fn(s, b, rng),
      save=lambda s: checkpoints.save(mngr, int(s.step), s, {'phase': 'train'}))
  if mngr.latest_step() != int(state.step):  # a rerun may find it saved
    checkpoints.save(mngr, int(state.step), state, {'phase': 'train'})
  mngr.close()
  # 'seconds': this process's training time (a resumed run's last leg).
  checkpoints.save_model(workdir, 0, state.ema_params,
                         {'trained_steps': int(state.step),
                          'seconds': time.time() - start})
  run.writer.write_scalars(int(state.step),
                           {'train/minutes': (time.time() - start) / 60})
  run.write_samples(state.ema_params,
                    num_steps=config.sample.teacher_num_steps,
                    name=f'grid_teacher_{config.sample.teacher_num_steps}',
                    step=int(state.step))


def _first_teacher(run: Run, abstract_params):
  """The first round's teacher: distill.teacher_checkpoint or models/0."""
  config = run.config
  path = config.distill.teacher_checkpoint or run.workdir
  if not config.distill.teacher_checkpoint and 0 not in (
      checkpoints.saved_models(run.workdir)):
    raise config_checks.ConfigError(
        f'Missing teacher checkpoint: {run.workdir}/models/0 does not exist; '
        'run --mode=train first, or set --config.distill.teacher_checkpoint '
        'to a teacher workdir or a models/<N> directory.')
  params, meta = checkpoints.load_model(
      path, abstract_params, num_sample_steps=0, sharding=run.replicated,
      source='teacher checkpoint')
  teacher_steps = meta.get('num_sample_steps', 0)
  if teacher_steps and teacher_steps != config.distill.start_num_steps:
    raise config_checks.ConfigError(
        f'The teacher at {path} samples in {teacher_steps} steps but '
        f'distill.start_num_steps={config.distill.start_num_steps}; set '
        f'--config.distill.start_num_steps={teacher_steps}.')
  return params


def distill(run: Run):
  """Progressive distillation, round by round; saves each student as
  models/<N> and resumes mid-round from distill/ checkpoints."""
  config, workdir = run.config, run.workdir
  counts = round_step_counts(config)
  done = checkpoints.saved_models(workdir)
  if all(n in done for n in counts):
    logging.info('Distillation already finished in %s', workdir)
    return
  network = run.network(config.distill.dropout)
  per_round = config.distill.steps_per_round
  optimizer = train_state_lib.make_optimizer(config, 'distill',
                                             decay_steps=per_round)
  abstract = run.abstract_state(network, optimizer)
  step_fn = steps.compile_distill_step(
      steps.step_settings(config, 'distill', network=network,
                          optimizer=optimizer), run.mesh)
  rng = steps.replicate(jax.random.fold_in(jax.random.key(config.seed), 2),
                        run.mesh)
  mngr = checkpoints.manager(os.path.join(workdir, 'distill'),
                             max_to_keep=config.checkpoint.max_to_keep)
  for round_index, num_steps in enumerate(counts):
    if num_steps in done:
      continue
    start = time.time()
    if round_index == 0:
      teacher = _first_teacher(run, abstract.params)
    else:
      teacher, _ = checkpoints.load_model(
          workdir, abstract.params, num_sample_steps=counts[round_index - 1],
          sharding=run.replicated, source='previous round')
    offset = round_index * per_round
    latest = mngr.latest_step()
    state = None
    if latest is not None and latest > offset:
      state, meta = checkpoints.restore(mngr, latest, abstract)
      if meta['num_sample_steps'] != num_steps:
        state = None  # a checkpoint of an earlier round: start afresh
      else:
        logging.info('Resuming the %d-step round at step %d', num_steps,
                     int(state.step))
    if state is None:
      state = run.fresh_state(teacher, optimizer, num_steps)
    logging.info('Round %d/%d: %d -> %d sampling steps', round_index + 1,
                 len(counts), 2 * num_steps, num_steps)
    meta = {'phase': 'distill', 'num_sample_steps': num_steps}
    state, last = run.loop(
        section='distill', state=state, num_steps=per_round,
        run_step=lambda s, b, t=teacher: step_fn(s, t, b, rng),
        save=lambda s, o=offset, m=meta: checkpoints.save(
            mngr, o + int(s.step), s, m),
        step_offset=offset, total_steps=len(counts) * per_round)
    checkpoints.save_model(workdir, num_steps, state.ema_params,
                           {'distill_steps': per_round,
                            'seconds': time.time() - start})
    run.writer.write_scalars(offset + per_round, {
        'distill/round_minutes': (time.time() - start) / 60,
        'distill/num_sample_steps': num_steps})
    logging.info('Round %d/%d (%d steps) done in %.1f min, final loss %.4g',
                 round_index + 1, len(counts), num_steps,
                 (time.time() - start) / 60, last.get('loss', float('nan')))
    run.write_samples(state.ema_params, num_steps=num_steps,
                      name=f'grid_{num_steps}', step=offset + per_round)
  mngr.close()


def sample(run: Run, num_samples: Optional[int] = None) -> dict:
  """Writes samples_<N>.npz (+ .png) for every model in the workdir.

  The teacher (models/0) samples with sample.teacher_num_steps and
  sample.sampler, and writes samples_<N>_teacher.npz; each student uses its
  own N steps with DDIM. Returns {name: paths}.
  """
  config, workdir = run.config, run.workdir
  models = checkpoints.saved_models(workdir)
  if not models:
    raise config_checks.ConfigError(
        f'No models in {workdir}/models: run --mode=train (and distill) first.')
  abstract_params = train_state_lib.abstract_params(run.network(0.0), config)
  written = {}
  for model_steps in models:
    params, _ = checkpoints.load_model(
        workdir, abstract_params, num_sample_steps=model_steps,
        sharding=run.replicated, source='model')
    if model_steps == 0:
      num_steps, sampler = config.sample.teacher_num_steps, config.sample.sampler
      name = f'samples_{num_steps}_teacher'
    else:
      num_steps, sampler, name = model_steps, 'ddim', f'samples_{model_steps}'
    paths = run.write_samples(params, num_steps=num_steps, name=name,
                              sampler=sampler, num_samples=num_samples)
    if paths:
      written[name] = paths
  return written


def run_mode(config: ml_collections.ConfigDict, workdir: str, mode: str):
  """Runs `mode` ('train' | 'distill' | 'sample' | 'eval' | 'all') in
  `workdir`; 'all' is train, distill and sample."""
  if mode not in MODES:
    raise config_checks.ConfigError(
        f'Unknown --mode={mode!r}; choose one of {", ".join(MODES)}.')
  run = Run(config, workdir)
  timings = {}
  phases = {'train': [train_teacher], 'distill': [distill], 'sample': [sample],
            'eval': [evaluation.evaluate],
            'all': [train_teacher, distill, sample]}[mode]
  for phase in phases:
    start = time.time()
    phase(run)
    timings[phase.__name__] = time.time() - start
    logging.info('%s took %.1f s', phase.__name__, timings[phase.__name__])
  run.writer.flush()
  return timings
