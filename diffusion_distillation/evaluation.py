"""--mode=eval: sample quality of every model in a workdir against real data.

For each model in <workdir>/models (the teacher at each of eval.
teacher_num_steps with DDIM and eval.ancestral_num_steps with the ancestral
sampler; each student at its own step count with DDIM), eval.num_samples
samples are drawn from ONE shared starting noise and label list, and scored:

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
                         eval.reference_num_steps DDIM steps.

The floor is the FD of as many real training images as samples against the
same test split. Results go to <workdir>/eval/results.json (+ results.md,
fd_vs_steps.png). The reference network exists for the bundled digits only
(reference_network.py); for CIFAR-10 or ImageNet an InceptionV3 feature
function would plug into metrics.batched_features the same way.
"""

import dataclasses
import io
import os
import time

import jax
import numpy as np
from absl import logging
from matplotlib import figure

from diffusion_distillation import checkpoints
from diffusion_distillation import data
from diffusion_distillation import errors
from diffusion_distillation import files
from diffusion_distillation import metrics
from diffusion_distillation import network as network_lib
from diffusion_distillation import reference_network
from diffusion_distillation import sampling


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


def _fidelity(x, reference_x) -> dict:
  mse, psnr = metrics.mse_and_psnr(x, reference_x)
  return {'mse': mse, 'psnr': psnr}


def check_can_evaluate(config, workdir) -> list:
  """The workdir's saved models; InputError when eval cannot run."""
  if 'eval' not in config:
    raise errors.InputError(
        'This config has no eval section; --mode=eval needs one (see '
        'configs/digits.py).'
    )
  if config.dataset.name != 'digits':
    raise errors.InputError(
        '--mode=eval has a reference network for the bundled digits only, '
        f'not {config.dataset.name!r}: FID on it needs InceptionV3 weights, '
        'which cannot be downloaded here; write samples with --mode=sample '
        'and score them with an FID evaluator.'
    )
  models = checkpoints.saved_models(workdir)
  if not models:
    raise errors.InputError(
        f'No models in {workdir}/models to evaluate: run --mode=train (and '
        'distill) first.'
    )
  return models


def evaluate(run) -> dict:
  """Scores every model of `run.workdir`; writes and returns the results."""
  config, workdir, settings = run.config, run.workdir, run.config.eval
  start = time.time()
  models = check_can_evaluate(config, workdir)
  reference = reference_network.ReferenceNetwork()
  test, train = data.load_digits('test'), data.load_digits('train')

  def features(images):
    return metrics.batched_features(
        reference.features, images, batch_size=settings.batch_size
    )

  test_stats = metrics.feature_stats(features(test.images))
  floor_count = min(settings.num_samples, len(train.labels))
  floor_images = train.images[
      np.random.default_rng(settings.seed).permutation(len(train.labels))[
          :floor_count
      ]
  ]
  floor_fd = metrics.frechet_distance(
      metrics.feature_stats(features(floor_images)), test_stats
  )

  sampler = sampling.Sampler(
      network_lib.build_network(config, dropout=0.0),
      config,
      run.mesh,
      batch_size=settings.batch_size,
  )
  noise = sampler.noise(settings.num_samples, settings.seed)
  labels = sampling.sample_labels_for(config, settings.num_samples)
  abstract = run.abstract_params()
  params, samples = {}, {}

  def samples_of(entry: Entry):
    if entry not in samples:
      if entry.model_steps not in params:
        params[entry.model_steps], _ = checkpoints.load_model(
            workdir,
            abstract,
            num_sample_steps=entry.model_steps,
            sharding=run.replicated,
            source='model',
        )
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
    logits = metrics.batched_features(
        reference.logits, x, batch_size=settings.batch_size
    )
    row = dict(dataclasses.asdict(entry), name=entry.name)
    row['fd'] = metrics.frechet_distance(
        metrics.feature_stats(features(x)), test_stats
    )
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
        _fidelity(x, samples_of(parent)) if parent else None
    )
    row['fidelity_to_reference'] = (
        _fidelity(x, samples_of(reference_entry))
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
      'reference_network': {
          'name': 'digits_classifier',
          'cache_path': reference.cache_path,
          'settings': dataclasses.asdict(reference.settings),
          'test_accuracy': reference.accuracy(
              test.images, test.labels, batch_size=settings.batch_size
          ),
      },
      'real_test_count': len(test.labels),
      'real_vs_real_fd': floor_fd,
      'real_vs_real_count': floor_count,
      'reference_entry': reference_entry.name if reference_entry else None,
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
  """FD against sampling steps (log2 x), as the paper's figure: distilled,
  undistilled DDIM, ancestral, and the real-data floor."""
  fig = figure.Figure(figsize=(6, 4), dpi=120)
  ax = fig.add_subplot()
  styles = {
      'distilled': ('o-', 'distilled (1 model per step count)'),
      'ddim': ('s--', 'undistilled DDIM'),
      'ancestral': ('^:', 'undistilled ancestral'),
  }
  for curve, rows in _by_curve(results).items():
    if rows:
      steps = sorted(rows)
      ax.plot(
          steps,
          [rows[n]['fd'] for n in steps],
          styles[curve][0],
          label=styles[curve][1],
      )
  ax.axhline(
      results['real_vs_real_fd'],
      color='gray',
      lw=1,
      label='real vs real (floor)',
  )
  ax.set_xscale('log', base=2)
  ax.set_yscale('log')
  ax.set_xlabel('sampling steps')
  ax.set_ylabel('FD (digits classifier features)')
  ax.grid(True, which='both', alpha=0.3)
  ax.legend()
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format='png')
  files.write_atomically(path, png.getvalue())
