"""What every phase of a run shares: its config, workdir, mesh, data and
writer (`Run`). pipeline.py's phase functions and evaluation take one.

`Wing` is what a kind of run sets apart from the core's (`CORE`): its
phase table, the checks of its config and its sampler. The guided wing
(diffusion_distillation/guided) gives its own; the core never names it.
"""

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from absl import logging

from diffusion_distillation import network as network_lib
from diffusion_distillation import sampling
from diffusion_distillation.data import datasets
from diffusion_distillation.runs import config_checks
from diffusion_distillation.runs import run_config
from diffusion_distillation.runs import workdir as workdir_lib
from diffusion_distillation.training import phases
from diffusion_distillation.training import training_loop
from diffusion_distillation.utils import errors
from diffusion_distillation.utils import sharding

# The config sections the core's phases and modes read.
CORE_SECTIONS = (
    'seed',
    'dataset',
    'model',
    'adam',
    'train',
    'distill',
    'checkpoint',
    'sample',
    'eval',
    'log_every_steps',
)


@dataclasses.dataclass(frozen=True)
class Wing:
  """What one kind of run trains, checks and samples with.

  Attributes:
    phases: its phase table (phases.Phase values): the run trains, checks
      and accepts the recovery fields of exactly these.
    check_config: (config, num_devices) -> config, raising InputError;
      it checks every phase of `phases` (config_checks.check_config with
      the table) and the wing's own sections.
    sampler: sampling.Sampler or a subclass, built as (network, config,
      mesh, batch_size=...).
    sections: the config sections it reads beyond CORE_SECTIONS: a config
      with a section no wing of the run reads is refused, rather than
      trained as if the section were not there.
    workdir: workdir.Workdir or a subclass (the wing's own models), built
      as (path, config, mesh).
  """

  phases: tuple
  check_config: Callable
  sampler: type
  sections: tuple = ()
  workdir: type = workdir_lib.Workdir

  def phase(self, name: str) -> phases.Phase:
    """The phase of the table called `name`."""
    return phases.get(name, self.phases)


CORE = Wing(
    phases=phases.PHASES,
    check_config=config_checks.check_config,
    sampler=sampling.Sampler,
)


class Run:
  """What every phase of one run shares: config, workdir, mesh, writer.

  Construction validates the config (with the wing's checks) and checks
  that the workdir holds no run of another config; it writes nothing.
  `record_config` writes config.json (and config_changes.json when a
  recovery field changed) once the mode's inputs are checked and the
  workdir is locked. `workdir` (a workdir.Workdir, or the wing's
  subclass) knows the workdir's folders and loads and saves its models.
  """

  def __init__(
      self,
      config: ml_collections.ConfigDict,
      workdir: str,
      mesh=None,
      writer=None,
      *,
      wing: Wing = CORE,
  ):
    self.wing = wing
    self.mesh = mesh if mesh is not None else sharding.make_mesh()
    unknown = sorted(set(config) - set(CORE_SECTIONS + wing.sections))
    if unknown:
      raise errors.InputError(
          f'The config has section {unknown[0]!r}, which this run does not '
          'train; run it with python -m diffusion_distillation.main, which '
          "runs each config with its wing's phases."
      )
    self.config = wing.check_config(config, self.mesh.size)
    self.config_changes = run_config.check(workdir, config, wing.phases)
    self.workdir = wing.workdir(workdir, config, self.mesh)
    if writer is not None:
      self.writer = writer

  @property
  def has_writer(self) -> bool:
    return 'writer' in vars(self)

  def record_config(self):
    """Writes config.json, and the recovery changes it accepted."""
    run_config.record(self.workdir.path, self.config, self.config_changes)

  @functools.cached_property
  def writer(self):
    """The metric writer (TensorBoard events in the workdir), made on first
    use so that a run that stops early leaves no events file."""
    # clu's writers load TensorFlow: imported when first needed, so that
    # refusing a bad config takes no time.
    from clu import metric_writers

    return metric_writers.create_default_writer(
        self.workdir.path, just_logging=jax.process_index() > 0
    )

  @functools.cached_property
  def dataset(self):
    """The training data: a datasets.Dataset (digits, in memory) or an
    input_pipeline.TfdsStream (tfds names)."""
    if self.config.dataset.name in datasets.IN_MEMORY_DATASETS:
      return datasets.load(self.config.dataset.name, 'train')
    # TensorFlow is imported only for the datasets that stream with it.
    from diffusion_distillation.data import input_pipeline

    return input_pipeline.TfdsStream(self.config.dataset)

  @functools.cached_property
  def sampler(self) -> sampling.Sampler:
    network = network_lib.build_network(self.config, dropout=0.0)
    return self.wing.sampler(network, self.config, self.mesh)

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
    if isinstance(self.dataset, datasets.Dataset):
      images, labels = datasets.batch_for_step(self.dataset, **where)
    else:
      images, labels = self.dataset.batch_for_step(**where)
    return sharding.device_batch(images, labels, self.mesh)

  def train(
      self, leg, trainer, *, start_params: Callable, teacher=None
  ) -> 'Trained':
    """Trains `leg` (a training_loop.Leg) with `trainer`, resuming its
    checkpoints, else starting from `start_params()`; a phase with a
    teacher steps against `teacher`'s parameters."""
    run_step = trainer.update
    if leg.phase.has_teacher:
      run_step = lambda state, batch: trainer.update(state, batch, teacher)
    start = time.time()
    state, last = training_loop.train(
        leg,
        config=self.config,
        abstract_state=trainer.abstract_state(),
        fresh_state=lambda: trainer.fresh_state(
            start_params(),
            num_sample_steps=leg.meta.get('num_sample_steps', 0),
        ),
        run_step=run_step,
        batches=lambda step: self.batch_at(leg.phase.name, step),
        writer=self.writer,
    )
    return Trained(state, last, time.time() - start)

  def finish_phase(
      self,
      title: str,
      trained: 'Trained',
      *,
      save: Callable[[Any, dict], None],
      meta: dict,
      step: int,
      minutes_key: str,
      grid_steps: int,
      grid_name: str,
      scalars: dict | None = None,
  ):
    """The end of a trained phase: `save(ema_params, meta + seconds)`,
    its minutes (as `minutes_key`) and `scalars` to the writer at `step`, a
    log line, and the phase's sample grid in `grid_steps` steps."""
    minutes = trained.seconds / 60
    save(trained.state.ema_params, {**meta, 'seconds': trained.seconds})
    self.writer.write_scalars(step, {minutes_key: minutes, **(scalars or {})})
    logging.info(
        '%s done in %.1f min, final loss %.4g',
        title,
        minutes,
        trained.last.get('loss', float('nan')),
    )
    self.write_samples(
        trained.state.ema_params,
        num_steps=grid_steps,
        name=grid_name,
        step=step,
    )

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
    """Samples in `num_steps` steps of `method` ('ddim' | 'ancestral') with
    the configured seed and labels; writes <name>.npz and <name>.png, and
    with `step` the grid to the metric writer. Returns the written paths on
    process 0, None elsewhere."""
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
    images = datasets.unit_interval_to_uint8(x)
    paths = sampling.write_samples(
        self.workdir.samples_dir, name, images, labels
    )
    if step is not None:
      self.writer.write_images(
          step, {f'samples/{name}': sampling.image_grid(images)[None]}
      )
    logging.info('Wrote %s and %s', paths['npz'], paths['png'])
    return paths


@dataclasses.dataclass(frozen=True)
class Trained:
  """What `Run.train` returns: the final train state, the last logged
  metrics and this process's training seconds (a resumed run's last leg)."""

  state: Any
  last: dict
  seconds: float
