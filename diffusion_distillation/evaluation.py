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
(`inception.py`). The bundled digits have no Inception; they are scored with
a small reference classifier (reference_network.py):

  fd                 Fréchet distance to the held-out real test split in the
                     reference network's feature space (lower is better);
  class_accuracy     the reference classifier's accuracy on the samples
                     against the labels they were asked for;
  classifier_score   the Inception Score formula with the reference
                     classifier's logits;
  fidelity_to_teacher    MSE / PSNR against the model it was distilled from,
                         sampled as in its round (twice the steps), from the
                         same noise;
  fidelity_to_reference  MSE / PSNR against the original teacher with
                         eval.reference_num_steps DDIM steps;

with a floor: the FD of as many real training images as samples against
the same test split. Results go to <workdir>/eval/results.json (+
results.md, fd_vs_steps.png).
"""

import dataclasses
import io
import os
import time

import jax
import numpy as np
from absl import logging
from matplotlib import figure

from diffusion_distillation import data
from diffusion_distillation import errors
from diffusion_distillation import fid as fid_lib
from diffusion_distillation import files
from diffusion_distillation import inception
from diffusion_distillation import metrics
from diffusion_distillation import network as network_lib
from diffusion_distillation import reference_network
from diffusion_distillation import sampling
from diffusion_distillation import workdir as workdir_lib


@dataclasses.dataclass(frozen=True)
class Entry:
  """One way of sampling: which model, which method, how many steps.

  model_steps: the model's saved step count, models/<model_steps>: 0 for
    the continuous-time teacher, N for the N-step student.
  method: 'ddim' | 'ancestral'.
  num_steps: sampling steps.
  """

  model_steps: int
  method: str
  num_steps: int

  @property
  def name(self) -> str:
    if self.model_steps:
      return f'student_{self.model_steps}'
    return f'teacher_{self.method}_{self.num_steps}'


def plan(config, models: list) -> list:
  """The entries to evaluate for the saved `models` (step counts)."""
  entries = []
  if 0 in models:
    entries += [Entry(0, 'ddim', n) for n in config.eval.teacher_num_steps]
    entries += [
        Entry(0, 'ancestral', n) for n in config.eval.ancestral_num_steps
    ]
  return entries + [Entry(n, 'ddim', n) for n in models if n > 0]


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


def fidelity(x, reference_x) -> dict:
  """MSE and PSNR of samples against samples from the same noise."""
  mse, psnr = metrics.mse_and_psnr(x, reference_x)
  return {'mse': mse, 'psnr': psnr}


# FID of the distilled models in the paper's table (50,000 samples).
PAPER_FID = {'cifar10': {1: 9.12, 2: 4.51, 4: 3.00, 8: 2.57}}


def check_can_evaluate(config, workdir) -> list:
  """The workdir's saved models; InputError when eval cannot run (checked
  before anything is written)."""
  if 'eval' not in config:
    raise errors.InputError(
        'This config has no eval section; --mode=eval needs one (see '
        'configs/digits.py and configs/cifar10.py).'
    )
  if config.dataset.name not in data.IN_MEMORY_DATASETS and not (
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
  models = workdir_lib.saved_models(workdir)
  if not models:
    raise errors.InputError(
        f'No models in {workdir}/models to evaluate: run --mode=train (and '
        'distill) first.'
    )
  return models


def evaluate(run) -> dict:
  """Scores every model of `run.workdir`; writes and returns the results."""
  models = check_can_evaluate(run.config, run.workdir)
  if run.config.dataset.name in data.IN_MEMORY_DATASETS:
    return _evaluate_digits(run, models)
  return _evaluate_inception(run, models)


class DigitsScoring:
  """What digits samples are scored against: the reference classifier, the
  statistics of its features on the held-out test split, and the floor of
  real training digits against those (the best FD a perfect model gets)."""

  def __init__(self, settings):
    self._batch_size = settings.batch_size
    self.network = reference_network.ReferenceNetwork()
    self.test = data.load_digits('test')
    train = data.load_digits('train')
    self.test_stats = metrics.feature_stats(self.features(self.test.images))
    self.floor_count = min(settings.num_samples, len(train.labels))
    order = np.random.default_rng(settings.seed).permutation(len(train.labels))
    self.floor_fd = self.fd(train.images[order[: self.floor_count]])

  def features(self, images):
    return metrics.batched_features(
        self.network.features, images, batch_size=self._batch_size
    )

  def logits(self, images):
    return metrics.batched_features(
        self.network.logits, images, batch_size=self._batch_size
    )

  def fd(self, images) -> float:
    return metrics.frechet_distance(
        metrics.feature_stats(self.features(images)), self.test_stats
    )

  def summary(self) -> dict:
    """The results' fields that describe the reference."""
    return {
        'reference_network': {
            'name': 'digits_classifier',
            'cache_path': self.network.cache_path,
            'settings': dataclasses.asdict(self.network.settings),
            'test_accuracy': self.network.accuracy(
                self.test.images, self.test.labels, batch_size=self._batch_size
            ),
        },
        'real_test_count': len(self.test.labels),
        'real_vs_real_fd': self.floor_fd,
        'real_vs_real_count': self.floor_count,
    }


def eval_sampler(run):
  """(sampler, noise, labels): every eval entry samples from the same
  starting noise and labels, in eval.batch_size batches."""
  config, settings = run.config, run.config.eval
  sampler = sampling.Sampler(
      network_lib.build_network(config, dropout=0.0),
      config,
      run.mesh,
      batch_size=settings.batch_size,
  )
  noise = sampler.noise(settings.num_samples, settings.seed)
  labels = sampling.sample_labels_for(config, settings.num_samples)
  return sampler, noise, labels


def _evaluate_digits(run, models: list) -> dict:
  """FD, class accuracy and fidelity in the digits classifier's terms."""
  config, workdir, settings = run.config, run.workdir, run.config.eval
  start = time.time()
  scoring = DigitsScoring(settings)
  sampler, noise, labels = eval_sampler(run)
  params, samples = {}, {}

  def samples_of(entry: Entry):
    if entry not in samples:
      if entry.model_steps not in params:
        params[entry.model_steps] = run.store.load(entry.model_steps)
      samples[entry] = sampler.sample(
          params[entry.model_steps],
          num_steps=entry.num_steps,
          num_samples=settings.num_samples,
          labels=labels,
          seed=settings.seed,
          method=entry.method,
          z=noise,
      )
    return samples[entry]

  reference_entry = (
      Entry(0, 'ddim', settings.reference_num_steps) if 0 in models else None
  )
  rows = []
  for entry in plan(config, models):
    entry_start = time.time()
    x = samples_of(entry)
    logits = scoring.logits(x)
    row = dict(dataclasses.asdict(entry), name=entry.name)
    row['fd'] = scoring.fd(x)
    row['class_accuracy'] = (
        None
        if labels is None
        else float(np.mean(np.argmax(logits, axis=1) == labels))
    )
    row['classifier_score'] = metrics.inception_score(
        logits, num_splits=min(10, len(logits))
    )[0]
    parent = distilled_from(entry, config, models)
    row['distilled_from'] = parent.name if parent else None
    row['fidelity_to_teacher'] = (
        fidelity(x, samples_of(parent)) if parent else None
    )
    row['fidelity_to_reference'] = (
        fidelity(x, samples_of(reference_entry))
        if reference_entry and entry != reference_entry
        else None
    )
    row['seconds'] = time.time() - entry_start
    logging.info(
        'eval %s: FD %.3f, class accuracy %s',
        entry.name,
        row['fd'],
        row['class_accuracy'],
    )
    rows.append(row)

  results = {
      'workdir': str(files.as_path(workdir)),
      'dataset': config.dataset.name,
      'num_samples': settings.num_samples,
      'seed': settings.seed,
      **scoring.summary(),
      'reference_entry': reference_entry.name if reference_entry else None,
      'entries': rows,
      'seconds': time.time() - start,
  }
  if jax.process_index() == 0:
    write_results(results, os.path.join(workdir, 'eval'))
  return results


def _reference(run, network: inception.FeatureNetwork) -> fid_lib.Reference:
  """eval.reference_stats, else the train split's statistics: read from the
  workdir's cache, or computed and cached there."""
  config, settings = run.config, run.config.eval
  if settings.reference_stats:
    return fid_lib.load_reference(
        settings.reference_stats, network, batch_size=settings.batch_size
    )
  dataset = config.dataset
  # The file name holds everything the statistics depend on.
  name = (
      f'reference_{dataset.name.replace("/", "_")}_{dataset.image_size}px_'
      f'{settings.reference_num_images}_{network.fingerprint}.npz'
  )
  path = os.path.join(run.workdir, 'eval', name)
  if files.as_path(path).exists():
    logging.info('Reading the reference statistics from %s', path)
    return fid_lib.load_reference(path, network, batch_size=settings.batch_size)
  # TensorFlow is imported only for the datasets that stream with it.
  from diffusion_distillation import input_pipeline

  logging.info(
      'Computing the reference statistics of %d %s train images (once; '
      'cached as %s)',
      settings.reference_num_images,
      dataset.name,
      path,
  )
  images = input_pipeline.reference_images(
      dataset, settings.reference_num_images
  )
  reference = fid_lib.reference_from_images(
      images, network, batch_size=settings.batch_size, source=path
  )
  if jax.process_index() == 0:
    files.as_path(path).parent.mkdir(parents=True, exist_ok=True)
    fid_lib.write_reference(path, images, reference)
  return reference


def _evaluate_inception(run, models: list) -> dict:
  """FID, Inception Score, precision and recall of every entry (tfds)."""
  config, workdir, settings = run.config, run.workdir, run.config.eval
  start = time.time()
  network = inception.FeatureNetwork(
      inception.load_params(settings.inception_weights), run.mesh
  )
  reference = _reference(run, network)
  sampler = sampling.Sampler(
      network_lib.build_network(config, dropout=0.0),
      config,
      run.mesh,
      batch_size=settings.batch_size,
  )
  noise = sampler.noise(settings.num_samples, settings.seed)
  labels = sampling.sample_labels_for(config, settings.num_samples)
  entries = plan(config, models)
  # Work per entry, for the ETA: its sampling steps, and about one network
  # pass for the Inception features.
  work = [entry.num_steps + 1 for entry in entries]
  rows, loaded_steps, params = [], None, None
  for index, entry in enumerate(entries):
    entry_start = time.time()
    if entry.model_steps != loaded_steps:  # one model on the devices at once
      params = run.store.load(entry.model_steps)
      loaded_steps = entry.model_steps
    x = sampler.sample(
        params,
        num_steps=entry.num_steps,
        num_samples=settings.num_samples,
        labels=labels,
        seed=settings.seed,
        method=entry.method,
        z=noise,
    )
    row = dict(dataclasses.asdict(entry), name=entry.name)
    row.update(
        fid_lib.score(
            data.unit_interval_to_uint8(x),
            reference,
            network,
            batch_size=settings.batch_size,
        )
    )
    row['seconds'] = time.time() - entry_start
    rows.append(row)
    elapsed = time.time() - start
    done = sum(work[: index + 1])
    logging.info(
        'eval %d/%d %s: FID %.3f, IS %.2f (%.0f s); ETA %.1f min',
        index + 1,
        len(entries),
        entry.name,
        row['fid'],
        row['inception_score'],
        row['seconds'],
        elapsed / done * (sum(work) - done) / 60,
    )
  results = {
      'workdir': str(files.as_path(workdir)),
      'dataset': config.dataset.name,
      'num_samples': settings.num_samples,
      'seed': settings.seed,
      'feature_network': {
          'name': 'inception_v3_fid',
          'weights': settings.inception_weights,
          'fingerprint': network.fingerprint,
      },
      'reference': {
          'path': reference.source,
          'num_images': (
              None if reference.features is None else len(reference.features)
          ),
      },
      'paper_fid': PAPER_FID.get(config.dataset.name, {}),
      'entries': rows,
      'seconds': time.time() - start,
  }
  if jax.process_index() == 0:
    write_results(results, os.path.join(workdir, 'eval'))
  return results


def write_results(results: dict, directory: str) -> dict:
  """results.json, results.md and fd_vs_steps.png in `directory` (local or
  gs://)."""
  directory = files.as_path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  paths = {
      name: str(directory / name)
      for name in ('results.json', 'results.md', 'fd_vs_steps.png')
  }
  files.write_json(results, paths['results.json'])
  files.write_atomically(paths['results.md'], markdown_table(results))
  plot_fd_vs_steps(results, paths['fd_vs_steps.png'])
  return paths


def _by_curve(results: dict) -> dict:
  """{'distilled' | 'ddim' | 'ancestral': {num_steps: row}}."""
  curves = {'distilled': {}, 'ddim': {}, 'ancestral': {}}
  for row in results['entries']:
    curve = 'distilled' if row['model_steps'] else row['method']
    curves[curve][row['num_steps']] = row
  return curves


def markdown_table(results: dict) -> str:
  """The scores per step count, one column group per curve."""
  if 'feature_network' in results:
    return _inception_table(results)
  return _digits_table(results)


def _cell(row: dict | None, field: str, fmt: str) -> str:
  return '' if row is None or row[field] is None else fmt.format(row[field])


def _inception_table(results: dict) -> str:
  """FID, Inception Score, precision and recall per step count."""
  curves = _by_curve(results)
  paper = {int(n): fid for n, fid in results['paper_fid'].items()}
  step_counts = sorted(
      {n for curve in curves.values() for n in curve} | set(paper)
  )
  lines = [
      (
          '| steps | FID distilled | FID distilled (paper) | FID DDIM | FID'
          ' ancestral | IS distilled | IS DDIM | precision distilled | recall'
          ' distilled |'
      ),
      '|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  ]
  for n in step_counts:
    distilled, ddim = curves['distilled'].get(n), curves['ddim'].get(n)
    cells = [
        _cell(distilled, 'fid', '{:.2f}'),
        f'{paper[n]:.2f}' if n in paper else '',
        _cell(ddim, 'fid', '{:.2f}'),
        _cell(curves['ancestral'].get(n), 'fid', '{:.2f}'),
        _cell(distilled, 'inception_score', '{:.2f}'),
        _cell(ddim, 'inception_score', '{:.2f}'),
        _cell(distilled, 'precision', '{:.3f}'),
        _cell(distilled, 'recall', '{:.3f}'),
    ]
    lines.append(f'| {n} | ' + ' | '.join(cells) + ' |')
  reference = results['reference']
  lines.append('')
  lines.append(
      f'{results["num_samples"]} samples per entry against {reference["path"]}'
      f' ({reference["num_images"]} reference images for precision and'
      ' recall); InceptionV3 weights'
      f' {results["feature_network"]["weights"]} (fingerprint'
      f' {results["feature_network"]["fingerprint"]}).'
  )
  return '\n'.join(lines) + '\n'


def _digits_table(results: dict) -> str:
  """FD and class accuracy per step count, one column group per curve."""
  curves = _by_curve(results)
  step_counts = sorted({n for curve in curves.values() for n in curve})

  def cell(curve, n, field, fmt):
    row = curves[curve].get(n)
    return '' if row is None or row[field] is None else fmt.format(row[field])

  def psnr(n):
    row = curves['distilled'].get(n)
    fidelity = row and row['fidelity_to_teacher']
    return f'{fidelity["psnr"]:.1f}' if fidelity else ''

  lines = [
      (
          '| steps | FD distilled | FD DDIM | FD ancestral | accuracy distilled'
          ' | accuracy DDIM | PSNR to teacher (dB) |'
      ),
      '|---:|---:|---:|---:|---:|---:|---:|',
  ]
  for n in step_counts:
    lines.append(
        f'| {n} | {cell("distilled", n, "fd", "{:.3f}")} '
        f'| {cell("ddim", n, "fd", "{:.3f}")} '
        f'| {cell("ancestral", n, "fd", "{:.3f}")} '
        f'| {cell("distilled", n, "class_accuracy", "{:.3f}")} '
        f'| {cell("ddim", n, "class_accuracy", "{:.3f}")} | {psnr(n)} |'
    )
  lines.append('')
  lines.append(
      f'Real-vs-real FD floor: {results["real_vs_real_fd"]:.3f}'
      f' ({results["real_vs_real_count"]} training images against the'
      f' {results["real_test_count"]} held-out test images); reference'
      ' classifier test accuracy'
      f' {results["reference_network"]["test_accuracy"]:.3f};'
      f' {results["num_samples"]} samples per entry.'
  )
  return '\n'.join(lines) + '\n'


def plot_fd_vs_steps(results: dict, path: str):
  """FD (digits) or FID against sampling steps (log2 x), as the paper's
  figure: distilled, undistilled DDIM, ancestral, and the real-data floor
  (digits) or the paper's distilled FIDs (CIFAR-10)."""
  fig = figure.Figure(figsize=(6, 4), dpi=120)
  ax = fig.add_subplot()
  styles = {
      'distilled': ('o-', 'distilled (1 model per step count)'),
      'ddim': ('s--', 'undistilled DDIM'),
      'ancestral': ('^:', 'undistilled ancestral'),
  }
  field = 'fid' if 'feature_network' in results else 'fd'
  for curve, rows in _by_curve(results).items():
    if rows:
      steps = sorted(rows)
      ax.plot(
          steps,
          [rows[n][field] for n in steps],
          styles[curve][0],
          label=styles[curve][1],
      )
  paper = {int(n): fid for n, fid in results.get('paper_fid', {}).items()}
  if paper:
    steps = sorted(paper)
    ax.plot(
        steps,
        [paper[n] for n in steps],
        'kx',
        label='distilled, the paper',
    )
  if 'real_vs_real_fd' in results:
    ax.axhline(
        results['real_vs_real_fd'],
        color='gray',
        lw=1,
        label='real vs real (floor)',
    )
  ax.set_xscale('log', base=2)
  ax.set_yscale('log')
  ax.set_xlabel('sampling steps')
  ax.set_ylabel(
      'FID (InceptionV3)'
      if field == 'fid'
      else 'FD (digits classifier features)'
  )
  ax.grid(True, which='both', alpha=0.3)
  ax.legend()
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format='png')
  files.write_atomically(path, png.getvalue())
