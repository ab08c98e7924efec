"""--mode=eval for guided configs: sample quality against guidance strength.

For each w in eval.guidance, every model of a guided workdir is sampled from
ONE shared starting noise and label list and scored as evaluation.py scores
unguided models (digits only: Fréchet distance in the reference
classifier's feature space against the held-out test split, and the
classifier's accuracy on the requested labels), plus the classifier's mean
confidence (its largest softmax probability) and its mean probability of
the requested label:

  teacher     the guided teacher, classifier-free guidance, at each of
              eval.teacher_num_steps with DDIM (and
              eval.ancestral_num_steps ancestral): 2 network evaluations
              per step;
  guide       the stage-one model, w as an input, DDIM in
              distill.start_num_steps steps (round one's teacher);
  student     each N-step student, w as an input, N steps of each of
              eval.student_samplers ('ddim', 'stochastic'): 1 evaluation
              per step.

Each entry also reports its network evaluations per sample and its
MSE / PSNR against the guided teacher at eval.reference_num_steps DDIM steps
from the same noise, labels and w. Results go to <workdir>/eval/
guided_results.json (+ guided_results.md, guided_vs_w.png).
"""

import dataclasses
import io
import os
import time

import jax
import numpy as np
from absl import logging
from matplotlib import figure

from diffusion_distillation import errors
from diffusion_distillation import evaluation
from diffusion_distillation import files
from diffusion_distillation import workdir as workdir_lib


@dataclasses.dataclass(frozen=True)
class Entry:
  """One way of sampling at one guidance strength.

  model: 'teacher' (models/0), 'guide' (models_guide/0) or 'student'.
  model_steps: the student's N (0 for the teacher and the stage-one model).
  method: 'ddim' | 'ancestral' | 'stochastic'.
  num_steps: sampling steps.
  w: guidance strength.
  """

  model: str
  model_steps: int
  method: str
  num_steps: int
  w: float

  @property
  def name(self) -> str:
    return f'{self.model}_{self.method}_{self.num_steps}_w{self.w:g}'

  @property
  def network_evaluations(self) -> int:
    """Per sample: classifier-free guidance evaluates the network twice."""
    return self.num_steps * (2 if self.model == 'teacher' else 1)


def plan(config, workdir) -> list:
  """The entries to evaluate for what the workdir holds."""
  settings = config.eval
  models = workdir_lib.saved_models(workdir)
  entries = []
  for w in settings.guidance:
    w = float(w)
    if 0 in models:
      entries += [
          Entry('teacher', 0, 'ddim', n, w) for n in settings.teacher_num_steps
      ]
      entries += [
          Entry('teacher', 0, 'ancestral', n, w)
          for n in settings.ancestral_num_steps
      ]
    if workdir_lib.has_stage_one_model(workdir):
      entries.append(
          Entry('guide', 0, 'ddim', config.distill.start_num_steps, w)
      )
    for n in sorted((n for n in models if n > 0), reverse=True):
      entries += [
          Entry('student', n, method, n, w)
          for method in settings.student_samplers
      ]
  return entries


def check_can_evaluate(config, workdir):
  if config.dataset.name != 'digits':
    raise errors.InputError(
        'Guided --mode=eval scores the bundled digits only, not '
        f'{config.dataset.name!r}: write samples at a guidance strength '
        '(--mode=sample --config.sample.guidance=W) and score them with '
        'python -m diffusion_distillation.fid (docs/reproducing.md).'
    )
  if 'eval' not in config:
    raise errors.InputError(
        'This config has no eval section; --mode=eval needs one (see '
        'configs/digits_guided.py).'
    )
  if not workdir_lib.saved_models(workdir):
    raise errors.InputError(
        f'No models in {workdir}/models to evaluate: run --mode=train (then '
        'guide and distill) first.'
    )


def _softmax(logits):
  shifted = logits - logits.max(axis=1, keepdims=True)
  probs = np.exp(shifted)
  return probs / probs.sum(axis=1, keepdims=True)


def evaluate(run, *, entries: list | None = None) -> dict:
  """Scores the guided workdir's models at every eval.guidance; writes and
  returns the results. `entries` (default: `plan`) selects a subset."""
  config, workdir, settings = run.config, run.workdir, run.config.eval
  start = time.time()
  check_can_evaluate(config, workdir)
  scoring = evaluation.DigitsScoring(settings)
  sampler, noise, labels = evaluation.eval_sampler(run)
  loaders = {
      'teacher': run.store.load_teacher,
      'guide': run.store.load_stage_one,
  }
  params, samples = {}, {}

  def params_of(entry: Entry):
    key = (entry.model, entry.model_steps)
    if key not in params:
      if entry.model == 'student':
        params[key] = run.store.load(entry.model_steps)
      else:
        params[key] = loaders[entry.model]()
    return params[key]

  def samples_of(entry: Entry):
    """(samples, seconds the sampling took)."""
    if entry not in samples:
      entry_params = params_of(entry)
      entry_start = time.time()
      x = sampler.sample(
          entry_params,
          num_steps=entry.num_steps,
          num_samples=settings.num_samples,
          labels=labels,
          seed=settings.seed,
          method=entry.method,
          z=noise,
          guidance=entry.w,
      )
      samples[entry] = (x, time.time() - entry_start)
    return samples[entry]

  has_teacher = 0 in workdir_lib.saved_models(workdir)
  rows = []
  for entry in plan(config, workdir) if entries is None else entries:
    x, sampling_seconds = samples_of(entry)
    probs = _softmax(np.asarray(scoring.logits(x), np.float64))
    row = dict(dataclasses.asdict(entry), name=entry.name)
    row['network_evaluations'] = entry.network_evaluations
    row['fd'] = scoring.fd(x)
    row['class_accuracy'] = float(np.mean(np.argmax(probs, axis=1) == labels))
    row['mean_confidence'] = float(np.mean(np.max(probs, axis=1)))
    row['label_probability'] = float(
        np.mean(probs[np.arange(len(labels)), labels])
    )
    reference_entry = Entry(
        'teacher', 0, 'ddim', settings.reference_num_steps, entry.w
    )
    row['fidelity_to_reference'] = (
        evaluation.fidelity(x, samples_of(reference_entry)[0])
        if has_teacher and entry != reference_entry
        else None
    )
    # Includes the compilation where this (steps, method, model kind) is
    # sampled first; w is an argument, so later strengths reuse it.
    row['sampling_seconds'] = sampling_seconds
    logging.info(
        'eval %s: FD %.3f, accuracy %.3f, confidence %.3f',
        entry.name,
        row['fd'],
        row['class_accuracy'],
        row['mean_confidence'],
    )
    rows.append(row)

  results = {
      'workdir': str(files.as_path(workdir)),
      'dataset': config.dataset.name,
      'num_samples': settings.num_samples,
      'seed': settings.seed,
      'guidance': [float(w) for w in settings.guidance],
      'reference_num_steps': settings.reference_num_steps,
      **scoring.summary(),
      'entries': rows,
      'seconds': time.time() - start,
  }
  if jax.process_index() == 0:
    write_results(results, os.path.join(workdir, 'eval'))
  return results


def write_results(results: dict, directory: str) -> dict:
  """guided_results.json, guided_results.md and guided_vs_w.png."""
  directory = files.as_path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  paths = {
      name: str(directory / name)
      for name in (
          'guided_results.json',
          'guided_results.md',
          'guided_vs_w.png',
      )
  }
  files.write_json(results, paths['guided_results.json'])
  files.write_atomically(paths['guided_results.md'], markdown_table(results))
  plot_against_w(results, paths['guided_vs_w.png'])
  return paths


def curve_name(row: dict) -> str:
  """'teacher ddim', 'teacher ancestral', 'guide' or 'student ddim' /
  'student stochastic'."""
  if row['model'] == 'guide':
    return 'stage one ddim'
  return f'{row["model"]} {row["method"]}'


def _curves(results: dict) -> dict:
  """{curve: {num_steps: {w: row}}}."""
  curves = {}
  for row in results['entries']:
    curve = curves.setdefault(curve_name(row), {})
    curve.setdefault(row['num_steps'], {})[row['w']] = row
  return curves


def markdown_table(results: dict) -> str:
  """One row per way of sampling, FD / accuracy / confidence per w."""
  strengths = results['guidance']
  head = ' | '.join(f'w={w:g} FD / acc. / conf.' for w in strengths)
  lines = [
      f'| sampler | steps | network evals | {head} |',
      '|---|---:|---:|' + '---:|' * len(strengths),
  ]
  for curve, by_steps in _curves(results).items():
    for steps in sorted(by_steps, reverse=True):
      rows = by_steps[steps]
      any_row = next(iter(rows.values()))
      cells = []
      for w in strengths:
        row = rows.get(w)
        cells.append(
            ''
            if row is None
            else (
                f'{row["fd"]:.1f} / {row["class_accuracy"]:.3f} / '
                f'{row["mean_confidence"]:.3f}'
            )
        )
      lines.append(
          f'| {curve} | {steps} | {any_row["network_evaluations"]} | '
          + ' | '.join(cells)
          + ' |'
      )
  lines.append('')
  lines.append(
      f"FD: Fréchet distance in the digits classifier's features to the "
      f'{results["real_test_count"]} held-out test images (real-vs-real '
      f'floor {results["real_vs_real_fd"]:.2f}); acc.: the classifier\'s '
      'accuracy on the requested labels; conf.: its mean largest softmax '
      f'probability; {results["num_samples"]} samples per entry; network '
      'evaluations per sample.'
  )
  return '\n'.join(lines) + '\n'


def plot_against_w(results: dict, path: str):
  """Accuracy (top) and FD (bottom) against w, one column per student step
  count N: the N-step student with DDIM and the stochastic sampler,
  undistilled guided DDIM in N steps, and the guided teacher at
  reference_num_steps (the same line in every column)."""
  curves = _curves(results)
  student_steps = sorted(
      set(curves.get('student ddim', {}))
      | set(curves.get('student stochastic', {}))
  ) or sorted(curves.get('teacher ddim', {}))
  columns = len(student_steps)
  fig = figure.Figure(figsize=(3.2 * columns, 5.6), dpi=120)
  axes = fig.subplots(2, columns, squeeze=False, sharex=True)
  reference = results.get('reference_num_steps')
  lines = (  # (curve, step count or None for the reference, style, label)
      ('teacher ddim', None, ('k', '--', '.'), f'guided DDIM {reference}'),
      ('teacher ddim', 'n', ('C3', ':', 's'), 'guided DDIM, same steps'),
      ('student ddim', 'n', ('C0', '-', 'o'), 'student, DDIM'),
      ('student stochastic', 'n', ('C2', '-.', '^'), 'student, stochastic'),
  )
  for column, n in enumerate(student_steps):
    for curve, steps, (color, style, marker), label in lines:
      rows = curves.get(curve, {}).get(reference if steps is None else n)
      if not rows:
        continue
      ws = sorted(rows)
      for row_index, field in enumerate(('class_accuracy', 'fd')):
        axes[row_index][column].plot(
            ws,
            [rows[w][field] for w in ws],
            color=color,
            linestyle=style,
            marker=marker,
            label=label,
        )
    axes[0][column].set_title(f'{n} step{"s" if n > 1 else ""}')
    axes[1][column].axhline(
        results['real_vs_real_fd'], color='gray', lw=1, label='real vs real'
    )
    axes[1][column].set_yscale('log')
    axes[1][column].set_xlabel('guidance strength w')
    for ax in axes[:, column]:
      ax.grid(True, which='both', alpha=0.3)
  axes[0][0].set_ylabel('classifier accuracy')
  axes[1][0].set_ylabel('FD (digits classifier features)')
  axes[1][0].legend(fontsize=7)
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format='png')
  files.write_atomically(path, png.getvalue())
