"""--mode=eval: sample quality of every model in a workdir against real data.

For each model in <workdir>/models (the teacher at each of eval.
teacher_num_steps with DDIM and eval.ancestral_num_steps with the ancestral
sampler; each student at its own step count with DDIM), eval.num_samples
samples are drawn from ONE shared starting noise and label list, and scored.

The tfds datasets (CIFAR-10, ImageNet, LSUN) are scored as the paper and the
ADM evaluator do, on the samples rounded to uint8 (`fid.py`):

  fid                FID against the reference statistics: those of
                     eval.reference_num_images train images, computed once
                     and cached in <workdir>/eval as an ADM-layout npz, or
                     an ADM reference batch given as eval.reference_stats;
  inception_score    (and inception_score_std) over parts of 5,000;
  precision, recall  improved precision and recall, k = 3, against the
                     reference images.

InceptionV3 weights are the user's file, eval.inception_weights
(`inception.py`). The bundled digits and Fashion-MNIST are scored without
Inception, with a small reference classifier of their own
(reference_network.py):

  fd                 Fréchet distance to the held-out real test split in the
                     reference network's feature space (lower is better);
  precision, recall  improved precision and recall, k = 3, against the test
                     split in the same features;
  class_accuracy     the reference classifier's accuracy on the samples
                     against the labels they were asked for;
  classifier_score   the Inception Score formula with the reference
                     classifier's logits;
  fidelity_to_teacher    MSE / PSNR against the model it was distilled from,
                         sampled as in its round (twice the steps), from the
                         same noise;
  fidelity_to_reference  MSE / PSNR against the original teacher with
                         eval.reference_num_steps DDIM steps;

with a floor: the FD (precision, recall) of as many real training images as
samples against the same test split. Results go to
<workdir>/eval/results.json (+ results.md, fd_vs_steps.png; report.py).
With eval.save_samples, each entry's samples also go to
<workdir>/eval/samples/<entry>.npz in the ADM evaluator's layout (uint8
[N, H, W, 3], grayscale repeated to RGB; arr_1 the labels), so standard FID
can be computed elsewhere (`fid.py`, the ADM evaluator).

One loop serves both kinds of eval, this one and guided configs'
(guided/evaluation.py): `score` samples each entry once (`Samples`) and
hands the samples to a list of scorers (scorers.py), small classes
whose `run(entry, x)` returns the row's scores.
"""

import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import logging

from diffusion_distillation import network as network_lib
from diffusion_distillation import sampling
from diffusion_distillation.evaluation import inception
from diffusion_distillation.evaluation import reference_network
from diffusion_distillation.evaluation import report as report_lib
from diffusion_distillation.evaluation import scorers as scorers_lib
from diffusion_distillation.runs import workdir as workdir_lib
from diffusion_distillation.utils import errors
from diffusion_distillation.utils import files

# What the steps eval writes; benchmarks redraw the table and plot from it.
write_results = report_lib.BY_STEPS.write
markdown_table = report_lib.markdown_table
plot_fd_vs_steps = report_lib.plot_fd_vs_steps


@dataclasses.dataclass(frozen=True)
class Entry:
  """One way of sampling: which model, which method, how many steps.

  model_steps: the model's saved step count, models/<model_steps>: 0 for
    the continuous-time teacher, N for the N-step student.
  method: 'ddim' | 'ancestral' | 'stochastic'.
  num_steps: sampling steps.
  w: guidance strength of a guided config; None for an unguided one.
  stage_one: the guided stage-one model (models_guide/0) instead of
    models/<model_steps>.
  """

  model_steps: int
  method: str
  num_steps: int
  w: float | None = None
  stage_one: bool = False

  @property
  def model(self) -> str:
    """'teacher' | 'guide' (the stage-one model) | 'student'."""
    if self.stage_one:
      return 'guide'
    return 'student' if self.model_steps else 'teacher'

  @property
  def name(self) -> str:
    if self.w is not None:
      return f'{self.model}_{self.method}_{self.num_steps}_w{self.w:g}'
    if self.model_steps:
      return f'student_{self.model_steps}'
    return f'teacher_{self.method}_{self.num_steps}'

  @property
  def network_evaluations(self) -> int:
    """Per sample: classifier-free guidance evaluates the network twice."""
    guided_teacher = self.w is not None and self.model == 'teacher'
    return self.num_steps * (2 if guided_teacher else 1)

  def describe(self) -> dict:
    """The fields that open the entry's row in the results."""
    row = {
        'model_steps': self.model_steps,
        'method': self.method,
        'num_steps': self.num_steps,
    }
    if self.w is not None:
      row = {'model': self.model, **row, 'w': self.w}
    return dict(row, name=self.name)


def plan(
    config,
    models: list,
    *,
    w: float | None = None,
    stage_one: bool = False,
    student_samplers: tuple = ('ddim',),
) -> list:
  """The entries to evaluate for the saved `models` (step counts), at
  guidance strength `w` for a guided config: the teacher at each of
  eval.teacher_num_steps (DDIM) and eval.ancestral_num_steps (ancestral),
  the stage-one model in distill.start_num_steps DDIM steps if `stage_one`,
  and each student in its own steps with each of `student_samplers`."""
  settings, entries = config.eval, []
  if 0 in models:
    entries += [Entry(0, 'ddim', n, w) for n in settings.teacher_num_steps]
    entries += [
        Entry(0, 'ancestral', n, w) for n in settings.ancestral_num_steps
    ]
  if stage_one:
    entries.append(
        Entry(0, 'ddim', config.distill.start_num_steps, w, stage_one=True)
    )
  for n in models:
    if n > 0:
      entries += [Entry(n, method, n, w) for method in student_samplers]
  return entries


def distilled_from(entry: Entry, config, models: list) -> Entry | None:
  """The model a student was distilled from, sampled as in its round."""
  if not entry.model_steps:
    return None
  parent_steps = 2 * entry.model_steps
  if parent_steps in models:
    return Entry(parent_steps, 'ddim', parent_steps)
  if 0 in models and parent_steps == config.distill.start_num_steps:
    return Entry(0, 'ddim', parent_steps)
  return None  # e.g. an imported student whose teacher is not here


def reference_entry(config, models: list, w: float | None = None):
  """The entry every other is compared with: the teacher with
  eval.reference_num_steps DDIM steps at `w` (None without a teacher)."""
  if 0 not in models:
    return None
  return Entry(0, 'ddim', config.eval.reference_num_steps, w)


def check_can_evaluate(config, workdir: workdir_lib.Workdir) -> list:
  """The workdir's saved models; InputError when eval cannot run (checked
  before anything is written)."""
  if 'eval' not in config:
    raise errors.InputError(
        'This config has no eval section; --mode=eval needs one (see '
        'configs/digits.py and configs/cifar10.py).'
    )
  if config.dataset.name not in reference_network.SETTINGS and not (
      config.eval.get('inception_weights')
  ):
    raise errors.InputError(
        'eval.inception_weights is not set: --mode=eval on '
        f'{config.dataset.name} measures FID with InceptionV3 weights that '
        f'you supply (nothing is downloaded); {inception.WEIGHTS_HELP}, then '
        'give --config.eval.inception_weights=PATH.'
    )
  for field in ('inception_weights', 'reference_stats'):
    path = config.eval.get(field)
    if path and not files.as_path(path).exists():
      raise errors.InputError(
          f'eval.{field}={path} does not exist; give an existing file '
          '(local or gs://), see docs/reproducing.md.'
      )
  models = workdir.models()
  if not models:
    raise workdir.no_models()
  return models


# ----------------------------------------------------------------------------
# The loop: sample each entry, score it with each scorer.


def eval_sampler(run):
  """(sampler, noise, labels): every eval entry samples from the same
  starting noise and labels, in eval.batch_size batches."""
  config, settings = run.config, run.config.eval
  sampler = run.wing.sampler(
      network_lib.build_network(config, dropout=0.0),
      config,
      run.mesh,
      batch_size=settings.batch_size,
  )
  noise = sampler.noise(settings.num_samples, settings.seed)
  labels = sampling.sample_labels_for(config, settings.num_samples)
  return sampler, noise, labels


def load_saved_model(run, entry: Entry):
  """The parameters of models/<entry.model_steps>."""
  return run.workdir.load(entry.model_steps)


class Samples:
  """eval.num_samples samples of each entry from ONE shared starting noise
  and label list.

  keep: hold every model's parameters and every entry's samples, so that
    scorers can compare an entry with another (the digits, whose samples
    are small); otherwise one model at a time is on the devices and
    nothing is kept (50,000 CIFAR-10 samples are 600 MB).
  load: entry -> the parameters of the entry's model.
  """

  def __init__(
      self, run, *, keep: bool, load: Callable[[Entry], Any] | None = None
  ):
    self._settings = run.config.eval
    self._sampler, self._noise, self.labels = eval_sampler(run)
    self._keep = keep
    self._load = load or (lambda entry: load_saved_model(run, entry))
    self._params, self._samples = {}, {}
    self.seconds = {}  # entry -> its sampling's seconds, compilation included

  def _params_of(self, entry: Entry):
    key = entry.model, entry.model_steps
    if key not in self._params:
      if not self._keep:
        self._params.clear()
      self._params[key] = self._load(entry)
    return self._params[key]

  def of(self, entry: Entry) -> np.ndarray:
    """The entry's samples: [eval.num_samples, H, W, C] in [-1, 1]."""
    if entry in self._samples:
      return self._samples[entry]
    params = self._params_of(entry)
    start = time.time()
    x = self._sampler.sample(
        params,
        num_steps=entry.num_steps,
        num_samples=self._settings.num_samples,
        labels=self.labels,
        seed=self._settings.seed,
        method=entry.method,
        z=self._noise,
        guidance=entry.w,
    )
    self.seconds[entry] = time.time() - start
    if self._keep:
      self._samples[entry] = x
    return x


# Logged per entry, where the row has them.
_HEADLINE = (
    'fid',
    'inception_score',
    'fd',
    'class_accuracy',
    'mean_confidence',
)


class RowCache:
  """Each scored row kept in <workdir>/eval/rows/<entry>.json, with what it
  was scored from (the entry, its model's metadata, the eval, sample and
  dataset settings): a rerun of an eval cut short takes the rows whose
  sources are the same and scores only the rest. The samples are not kept,
  so an entry compared with a cached one samples that one again (the same
  noise gives the same samples)."""

  VERSION = 1  # bump when a scorer changes what a row holds

  def __init__(self, run):
    self._run = run
    self._folder = files.as_path(run.workdir.eval_dir) / 'rows'

  def _source(self, entry: Entry) -> dict:
    config = self._run.config
    return {
        'version': self.VERSION,
        'entry': entry.describe(),
        'model': workdir_lib.model_meta(
            self._run.workdir.path, entry.model_steps
        ),
        'eval': config.eval.to_dict(),
        'sample': config.sample.to_dict(),
        'dataset': config.dataset.to_dict(),
    }

  def _path(self, entry: Entry):
    return self._folder / f'{entry.name}.json'

  def get(self, entry: Entry) -> dict | None:
    """The kept row of `entry` if it was scored from the same sources."""
    path = self._path(entry)
    if not path.exists():
      return None
    try:
      kept = json.loads(path.read_text())
    except (OSError, ValueError):
      return None  # unreadable: scored again and rewritten
    source = json.loads(json.dumps(self._source(entry)))  # tuples as lists
    return kept['row'] if kept.get('source') == source else None

  def put(self, entry: Entry, row: dict):
    if jax.process_index() == 0:
      self._folder.mkdir(parents=True, exist_ok=True)
      # json's Infinity keeps an identical sample's PSNR a float.
      files.write_atomically(
          self._path(entry),
          json.dumps({'source': self._source(entry), 'row': row}),
      )


def score(
    entries: list,
    samples: Samples,
    scorers: list,
    *,
    time_rows: bool = True,
    cache: RowCache | None = None,
) -> list:
  """One results row per entry: its `describe()` fields, then each
  scorer's `run(entry, x)`, then (if `time_rows`) 'seconds', the entry's
  wall time (sampling, scoring and any samples it is compared with).
  With a `cache`, rows scored before from the same sources are reused."""
  # Work per entry, for the ETA: its sampling steps and about one network
  # pass for the features.
  work = [entry.num_steps + 1 for entry in entries]
  start, rows = time.time(), []
  for index, entry in enumerate(entries):
    entry_start = time.time()
    kept = cache and cache.get(entry)
    if kept:
      rows.append(kept)
      logging.info(
          'eval %d/%d %s: scored before', index + 1, len(entries), entry.name
      )
      continue
    x = samples.of(entry)
    row = entry.describe()
    for scorer in scorers:
      row.update(scorer.run(entry, x))
    if time_rows:
      row['seconds'] = time.time() - entry_start
    if cache:
      cache.put(entry, row)
    rows.append(row)
    done = sum(work[: index + 1])
    logging.info(
        'eval %d/%d %s: %s (%.0f s); ETA %.1f min',
        index + 1,
        len(entries),
        entry.name,
        ', '.join(
            f'{key} {row[key]:.3f}'
            for key in _HEADLINE
            if row.get(key) is not None
        ),
        time.time() - entry_start,
        (time.time() - start) / done * (sum(work) - done) / 60,
    )
  return rows


def run_eval(
    run,
    entries: list,
    samples: Samples,
    scorers: list,
    *,
    summary: dict,
    report: report_lib.Report,
    start: float,
    time_rows: bool = True,
    cache: RowCache | None = None,
) -> dict:
  """Scores `entries`; writes (process 0) and returns the results: the
  run's fields, `summary` (what the scores are measured against), the
  rows, and the seconds since `start`."""
  config = run.config
  rows = score(entries, samples, scorers, time_rows=time_rows, cache=cache)
  results = {
      'workdir': str(files.as_path(run.workdir.path)),
      'dataset': config.dataset.name,
      'num_samples': config.eval.num_samples,
      'seed': config.eval.seed,
      **summary,
      'entries': rows,
      'seconds': time.time() - start,
  }
  if jax.process_index() == 0:
    report.write(results, run.workdir.eval_dir)
  return results


def evaluate(run, *, keep_rows: bool = False) -> dict:
  """Scores every model of the run's workdir; writes and returns the
  results.

  keep_rows: keep each scored row (RowCache), so that a rerun of an eval
  cut short continues (the benchmarks' long evals)."""
  config, start = run.config, time.time()
  models = check_can_evaluate(config, run.workdir)
  if config.dataset.name in reference_network.SETTINGS:
    samples = Samples(run, keep=True)
    classifier = scorers_lib.ClassifierScorer(
        config.eval, config.dataset, samples.labels
    )
    scorers = [
        classifier,
        scorers_lib.FidelityScorer(
            samples,
            lambda entry: reference_entry(config, models, entry.w),
            lambda entry: distilled_from(entry, config, models),
        ),
    ]
    reference = reference_entry(config, models)
    summary = dict(
        classifier.summary(), reference_entry=reference and reference.name
    )
  else:
    samples = Samples(run, keep=False)
    scorers = [scorers_lib.InceptionScorer(run)]
    summary = scorers[0].summary()
  if config.eval.get('save_samples'):
    scorers.append(scorers_lib.SampleWriter(run, samples.labels))
  return run_eval(
      run,
      plan(config, models),
      samples,
      scorers,
      summary=summary,
      report=report_lib.BY_STEPS,
      start=start,
      cache=RowCache(run) if keep_rows else None,
  )
