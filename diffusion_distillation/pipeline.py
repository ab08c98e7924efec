"""The run loops: teacher training, progressive distillation, sampling.

Each entry point takes (config, workdir), resumes from whatever the workdir
holds, and can be called from a notebook as well as from `main.py`.
"""

import os
import time
from collections.abc import Callable

import jax
import ml_collections
from absl import logging

from diffusion_distillation import checkpoints
from diffusion_distillation import config_checks
from diffusion_distillation import data
from diffusion_distillation import errors
from diffusion_distillation import evaluation
from diffusion_distillation import files
from diffusion_distillation import guided
from diffusion_distillation import guided_evaluation
from diffusion_distillation import health
from diffusion_distillation import network as network_lib
from diffusion_distillation import preemption
from diffusion_distillation import sampling
from diffusion_distillation import sharding
from diffusion_distillation import trainer as trainer_lib
from diffusion_distillation import workdir_lock

MODES = ('train', 'distill', 'sample', 'eval', 'all')
# Guided configs (a guidance section): 'guide' is stage one, between the
# teacher and the rounds; see guided.py.
GUIDED_MODES = ('train', 'guide', 'distill', 'sample', 'eval', 'all')

_MISSING_TEACHER = (
    'Missing teacher checkpoint: {workdir}/models/0 does not exist; run '
    '--mode=train first, or set --config.distill.teacher_checkpoint to a '
    'teacher workdir or a models/<N> directory.'
)


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


class Run:
  """What every phase of one run shares: config, workdir, mesh, writer.

  Construction validates the config and checks that the workdir holds no
  run of another config; it writes nothing. `record_config` then writes
  config.json (and config_changes.json when a recovery field changed), once
  the mode's inputs are checked (`preflight`) and the workdir is locked.
  """

  def __init__(
      self,
      config: ml_collections.ConfigDict,
      workdir: str,
      mesh=None,
      writer=None,
  ):
    self.mesh = mesh if mesh is not None else sharding.make_mesh()
    self.config = config_checks.check_config(config, self.mesh.size)
    self.workdir = workdir
    self.config_changes = checkpoints.check_run_config(workdir, config)
    self._writer = writer
    self.replicated = sharding.replicated(self.mesh)
    self._dataset = None
    self._sampler = None

  @property
  def has_writer(self) -> bool:
    return self._writer is not None

  def record_config(self):
    for field, (before, after) in self.config_changes.items():
      logging.warning(
          'Resuming with %s=%r (it was %r); recorded in %s/config_changes.json',
          field,
          after,
          before,
          self.workdir,
      )
    checkpoints.record_run_config(
        self.workdir, self.config, self.config_changes
    )

  def preflight(self, mode: str):
    """Checks what `mode` needs before anything is written.

    Raises:
      InputError: the workdir is a file, the training data is not prepared,
        or the models the mode starts from do not exist.
    """
    path = files.as_path(self.workdir)
    if path.exists() and not path.is_dir():
      raise errors.InputError(
          f'--workdir={self.workdir} is a file; give a directory (new or a '
          "run's)."
      )
    models = checkpoints.saved_models(self.workdir)
    if mode in ('train', 'guide', 'distill', 'all'):
      name = self.config.dataset.name
      if name not in data.IN_MEMORY_DATASETS:
        from diffusion_distillation import input_pipeline

        input_pipeline.check_prepared(self.config.dataset)
    guided_config = network_lib.is_guided(self.config)
    if mode == 'guide' and not (
        0 in models or guided.has_stage_one_model(self.workdir)
    ):
      raise errors.InputError(
          f'Missing guided teacher: {self.workdir}/models/0 does not exist; '
          'run --mode=train first.'
      )
    if mode == 'distill':
      counts = round_step_counts(self.config)
      teacher = self.config.distill.teacher_checkpoint
      first = (
          guided.has_stage_one_model(self.workdir)
          if guided_config
          else 0 in models
      )
      if not all(n in models for n in counts) and not teacher and not first:
        raise errors.InputError(
            f'Missing stage-one model: {self.workdir}/{guided.STAGE_ONE_DIR}/0 '
            'does not exist; run --mode=guide first.'
            if guided_config
            else _MISSING_TEACHER.format(workdir=self.workdir)
        )
      if teacher:
        checkpoints.resolve_model_path(teacher)
    if mode == 'sample' and not models:
      raise errors.InputError(
          f'No models in {self.workdir}/models: run --mode=train (and '
          'distill) first.'
      )
    if mode == 'eval':
      (guided_evaluation if guided_config else evaluation).check_can_evaluate(
          self.config, self.workdir
      )

  @property
  def writer(self):
    """The metric writer (TensorBoard events in the workdir), made on first
    use so that a run that stops early leaves no events file."""
    if self._writer is None:
      # clu's writers load TensorFlow: imported when first needed, so that
      # refusing a bad config takes no time.
      from clu import metric_writers

      self._writer = metric_writers.create_default_writer(
          self.workdir, just_logging=jax.process_index() > 0
      )
    return self._writer

  @property
  def dataset(self):
    """The training data: a data.Dataset (digits, in memory) or an
    input_pipeline.TfdsStream (tfds names)."""
    if self._dataset is None:
      name = self.config.dataset.name
      if name in data.IN_MEMORY_DATASETS:
        self._dataset = data.load(name, 'train')
      else:
        # TensorFlow is imported only for the datasets that stream with it.
        from diffusion_distillation import input_pipeline

        self._dataset = input_pipeline.TfdsStream(self.config.dataset)
    return self._dataset

  @property
  def sampler(self) -> sampling.Sampler:
    if self._sampler is None:
      self._sampler = sampling.Sampler(
          network_lib.build_network(self.config, dropout=0.0),
          self.config,
          self.mesh,
      )
    return self._sampler

  def abstract_params(self):
    """The parameter shapes of the config's network, replicated."""
    return jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(
            a.shape, a.dtype, sharding=self.replicated
        ),
        network_lib.abstract_params(
            network_lib.build_network(self.config, dropout=0.0), self.config
        ),
    )

  def batch_at(self, section: str, step: int) -> dict:
    """The batch of optimizer steps [step, step + substeps); the loop asks
    for consecutive steps, which a tfds stream continues."""
    phase = self.config[section]
    where = dict(
        seed=self.config.seed,
        step=step,
        batch_size=phase.batch_size,
        substeps=phase.substeps,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    if isinstance(self.dataset, data.Dataset):
      images, labels = data.batch_for_step(self.dataset, **where)
    else:
      images, labels = self.dataset.batch_for_step(**where)
    return sharding.device_batch(images, labels, self.mesh)

  def write_samples(
      self,
      params,
      *,
      num_steps: int,
      name: str,
      method: str = 'ddim',
      num_samples: int | None = None,
      step: int | None = None,
  ) -> dict | None:
    """Samples in `num_steps` sampling steps of `method` ('ddim' |
    'ancestral') with the configured seed and labels; writes <name>.npz and
    <name>.png.

    With `step`, the grid also goes to the metric writer (TensorBoard).
    Returns the written paths on process 0, None elsewhere.
    """
    sample = self.config.sample
    num_samples = num_samples or sample.num_samples
    labels = sampling.sample_labels_for(self.config, num_samples)
    x = self.sampler.sample(
        params,
        num_steps=num_steps,
        num_samples=num_samples,
        labels=labels,
        seed=sample.seed,
        method=method,
    )
    if jax.process_index() != 0:
      return None
    images = data.unit_interval_to_uint8(x)
    paths = sampling.write_samples(
        os.path.join(self.workdir, 'samples'), name, images, labels
    )
    if step is not None:
      self.writer.write_images(
          step, {f'samples/{name}': sampling.image_grid(images)[None]}
      )
    logging.info('Wrote %s and %s', paths['npz'], paths['png'])
    return paths

  def loop(
      self,
      *,
      section: str,
      state,
      num_updates: int,
      run_step: Callable,
      save: Callable,
      last_good: str,
      step_offset: int = 0,
      total_updates: int = 0,
  ):
    """Runs `run_step` from state.step to `num_updates`, logging and saving.

    Every periodic save, and the return, come after a health check (see
    health.py): a diverged state is never saved or returned. On SIGTERM or
    SIGINT (see preemption.py) it saves after the dispatch in flight and
    raises preemption.Stopped.

    Args:
      section: 'train', 'guide' or 'distill' (config section and metric
        prefix).
      state: TrainState to continue from.
      num_updates: optimizer steps in this phase (a multiple of substeps).
      run_step: (state, batch) -> (state, metrics).
      save: (state) -> the saved checkpoint's name, e.g. 'teacher/200'.
      last_good: what a diverged run would resume from, until a save.
      step_offset: global step of this phase's step 0 (distillation rounds).
      total_updates: optimizer steps of the whole phase, for the ETA.

    Returns:
      (state, the last logged metrics as floats).

    Raises:
      RunStopped when the state diverged or too many updates were skipped;
      preemption.Stopped on a signal, after saving.
    """
    from clu import periodic_actions

    phase, every = self.config[section], self.config.checkpoint
    report = periodic_actions.ReportProgress(
        num_train_steps=total_updates or num_updates,
        writer=self.writer,
        every_secs=30.0,
    )
    guard = health.StateGuard(section, phase, state.params, last_good)
    step = int(state.step)
    last_save = time.time()
    logged = {}
    with preemption.deferred():
      while step < num_updates:
        batch = self.batch_at(section, step_offset + step)
        state, metrics = run_step(state, batch)
        guard.dispatched(metrics)
        step += phase.substeps
        global_step = step_offset + step
        report(global_step)
        if step % self.config.log_every_steps < phase.substeps or (
            step >= num_updates
        ):
          logged = {k: float(v) for k, v in jax.device_get(metrics).items()}
          guard.check(state, step)
          self.writer.write_scalars(
              global_step, {f'{section}/{k}': v for k, v in logged.items()}
          )
        due_by_steps = every.every_steps and (
            step % every.every_steps < phase.substeps
        )
        due_by_time = time.time() - last_save >= every.every_secs
        saved_now = step < num_updates and (due_by_steps or due_by_time)
        if saved_now:
          guard.check(state, step)
          guard.saved(save(state))
          last_save = time.time()
        # Dispatch counts: the ids JAX's preemption sync expects, +1 each.
        if preemption.requested(global_step // phase.substeps):
          if not saved_now:
            guard.check(state, step)
            guard.saved(save(state))
          preemption.stop(
              f'at {section} step {global_step}, saved as {guard.last_good}'
          )
    guard.check(state, step, final=True)
    return state, logged

  def train_continuous_phase(
      self,
      *,
      section: str,
      directory: str,
      trainer,
      fresh_params: Callable,
      run_step: Callable,
      name: str,
      fresh_note: str,
  ):
    """A continuous-time phase (the teacher; guided stage one): resumes from
    the newest checkpoint under `directory` that restores, else starts from
    `fresh_params()`; trains to config[section].num_steps through `loop`
    and saves the final state there too.

    Returns:
      (state, the last logged metrics, the time.time() its training began).
    """
    mngr = checkpoints.manager(
        directory, max_to_keep=self.config.checkpoint.max_to_keep
    )
    restored = checkpoints.restore_latest(mngr, trainer.abstract_state())
    if restored is not None:
      latest, state, _ = restored
      last_good = f'{directory}/{latest}'
      logging.info('Resuming %s at step %d', name, latest)
    else:
      state = trainer.fresh_state(fresh_params(), num_sample_steps=0)
      last_good = f'none: {fresh_note}'

    def save(state):
      checkpoints.save(mngr, int(state.step), state, {'phase': section})
      return f'{directory}/{int(state.step)}'

    start = time.time()
    state, last = self.loop(
        section=section,
        state=state,
        num_updates=self.config[section].num_steps,
        run_step=run_step,
        save=save,
        last_good=last_good,
    )
    if mngr.latest_step() != int(state.step):  # a rerun may find it saved
      save(state)
    mngr.close()
    return state, last, start


def train_teacher(run: Run):
  """Trains the continuous-time teacher; saves it as models/0."""
  config, workdir = run.config, run.workdir
  grid_name = f'grid_teacher_{config.sample.teacher_num_steps}'
  if 0 in checkpoints.saved_models(workdir):
    logging.info('Teacher already trained in %s', workdir)
    _write_missing_grid(run, 0, config.sample.teacher_num_steps, grid_name)
    return
  trainer = trainer_lib.build(config, 'train', run.mesh)
  state, _, start = run.train_continuous_phase(
      section='train',
      directory=os.path.join(workdir, 'teacher'),
      trainer=trainer,
      fresh_params=lambda: trainer.init_params(
          trainer_lib.stream_key(config.seed, trainer_lib.RngStream.INIT)
      ),
      run_step=trainer.update,
      name='teacher training',
      fresh_note='the teacher would start from its initialisation',
  )
  # 'seconds': this process's training time (a resumed run's last leg).
  checkpoints.save_model(
      workdir,
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
  if (files.as_path(run.workdir) / 'samples' / f'{name}.png').exists():
    return
  params, _ = checkpoints.load_model(
      run.workdir,
      run.abstract_params(),
      num_sample_steps=model_steps,
      sharding=run.replicated,
      source='model',
  )
  run.write_samples(params, num_steps=num_steps, name=name)


def _first_teacher(run: Run):
  """The first round's teacher: distill.teacher_checkpoint or models/0
  (for a guided config: the stage-one model)."""
  config = run.config
  if network_lib.is_guided(config) and not config.distill.teacher_checkpoint:
    return guided.first_teacher(run)
  path = config.distill.teacher_checkpoint or run.workdir
  if not config.distill.teacher_checkpoint and 0 not in (
      checkpoints.saved_models(run.workdir)
  ):
    raise errors.InputError(_MISSING_TEACHER.format(workdir=run.workdir))
  params, meta = checkpoints.load_model(
      path,
      run.abstract_params(),
      num_sample_steps=0,
      sharding=run.replicated,
      source='teacher checkpoint',
  )
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
  models/<N> and resumes mid-round from distill/ checkpoints."""
  config, workdir = run.config, run.workdir
  student_step_counts = round_step_counts(config)
  done = checkpoints.saved_models(workdir)
  if all(n in done for n in student_step_counts):
    logging.info('Distillation already finished in %s', workdir)
    for n in student_step_counts:
      _write_missing_grid(run, n, n, f'grid_{n}')
    return
  trainer = trainer_lib.build(config, 'distill', run.mesh)
  updates_per_round = config.distill.steps_per_round
  abstract = trainer.abstract_state()
  distill_dir = os.path.join(workdir, 'distill')
  mngr = checkpoints.manager(
      distill_dir, max_to_keep=config.checkpoint.max_to_keep
  )
  num_rounds = len(student_step_counts)
  for round_index, student_steps in enumerate(student_step_counts):
    if student_steps in done:
      _write_missing_grid(
          run, student_steps, student_steps, f'grid_{student_steps}'
      )
      continue
    start = time.time()
    if round_index == 0:
      teacher = _first_teacher(run)
    else:
      teacher, _ = checkpoints.load_model(
          workdir,
          abstract.params,
          num_sample_steps=student_step_counts[round_index - 1],
          sharding=run.replicated,
          source='previous round',
      )
    offset = round_index * updates_per_round
    teacher_name = (
        f'{workdir}/models/{2 * student_steps}' if round_index else 'teacher'
    )
    last_good = f'none: the round would start again from {teacher_name}'
    restored = checkpoints.restore_latest(mngr, abstract, after_step=offset)
    state = None
    if restored is not None:
      latest, state, meta = restored
      if meta['num_sample_steps'] != student_steps:
        state = None  # a checkpoint of an earlier round: start afresh
      else:
        last_good = f'{distill_dir}/{latest}'
        logging.info(
            'Resuming the %d-step round at step %d',
            student_steps,
            int(state.step),
        )
    if state is None:
      state = trainer.fresh_state(teacher, num_sample_steps=student_steps)
    logging.info(
        'Round %d/%d: %d -> %d sampling steps',
        round_index + 1,
        num_rounds,
        2 * student_steps,
        student_steps,
    )
    meta = {'phase': 'distill', 'num_sample_steps': student_steps}

    def save(state, offset=offset, meta=meta):
      checkpoints.save(mngr, offset + int(state.step), state, meta)
      return f'{distill_dir}/{offset + int(state.step)}'

    state, last = run.loop(
        section='distill',
        state=state,
        num_updates=updates_per_round,
        run_step=lambda s, b, t=teacher: trainer.update(s, b, t),
        save=save,
        last_good=last_good,
        step_offset=offset,
        total_updates=num_rounds * updates_per_round,
    )
    checkpoints.save_model(
        workdir,
        student_steps,
        state.ema_params,
        {'distill_steps': updates_per_round, 'seconds': time.time() - start},
    )
    run.writer.write_scalars(
        offset + updates_per_round,
        {
            'distill/round_minutes': (time.time() - start) / 60,
            'distill/num_sample_steps': student_steps,
        },
    )
    logging.info(
        'Round %d/%d (%d steps) done in %.1f min, final loss %.4g',
        round_index + 1,
        num_rounds,
        student_steps,
        (time.time() - start) / 60,
        last.get('loss', float('nan')),
    )
    run.write_samples(
        state.ema_params,
        num_steps=student_steps,
        name=f'grid_{student_steps}',
        step=offset + updates_per_round,
    )
  mngr.close()


def sample(run: Run, num_samples: int | None = None) -> dict:
  """Writes samples_<N>.npz (+ .png) for every model in the workdir.

  The teacher (models/0) samples with sample.teacher_num_steps and
  sample.sampler, and writes samples_<N>_teacher.npz; each student uses its
  own N steps with DDIM. Returns {name: paths}.
  """
  config, workdir = run.config, run.workdir
  models = checkpoints.saved_models(workdir)
  if not models:
    raise errors.InputError(
        f'No models in {workdir}/models: run --mode=train (and distill) first.'
    )
  written = {}
  for model_steps in models:
    params, _ = checkpoints.load_model(
        workdir,
        run.abstract_params(),
        num_sample_steps=model_steps,
        sharding=run.replicated,
        source='model',
    )
    if model_steps == 0:
      num_steps = config.sample.teacher_num_steps
      method, name = config.sample.sampler, f'samples_{num_steps}_teacher'
    else:
      num_steps, method = model_steps, 'ddim'
      name = f'samples_{model_steps}'
    paths = run.write_samples(
        params,
        num_steps=num_steps,
        name=name,
        method=method,
        num_samples=num_samples,
    )
    if paths:
      written[name] = paths
  return written


_PHASES_OF_MODE = {
    'train': (train_teacher,),
    'distill': (distill,),
    'sample': (sample,),
    'eval': (evaluation.evaluate,),
    'all': (train_teacher, distill, sample),
}


_GUIDED_PHASES_OF_MODE = {
    'train': (train_teacher,),
    'guide': (guided.guide,),
    'distill': (distill,),
    'sample': (guided.sample,),
    'eval': (guided_evaluation.evaluate,),
    'all': (train_teacher, guided.guide, distill, guided.sample),
}


def run_mode(config: ml_collections.ConfigDict, workdir: str, mode: str):
  """Runs `mode` ('train' | 'distill' | 'sample' | 'eval' | 'all', and
  'guide' for guided configs) in `workdir`; 'all' is train, (guide,)
  distill and sample. Returns {phase: seconds}."""
  is_guided = network_lib.is_guided(config)
  modes, phases = (
      (GUIDED_MODES, _GUIDED_PHASES_OF_MODE)
      if is_guided
      else (MODES, _PHASES_OF_MODE)
  )
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
  run.preflight(mode)
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
      for phase in phases[mode]:
        start = time.time()
        phase(run)
        timings[phase.__name__] = time.time() - start
        logging.info('%s took %.1f s', phase.__name__, timings[phase.__name__])
    finally:
      if run.has_writer:
        run.writer.flush()
  return timings
