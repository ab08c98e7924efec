"""--mode=eval for guided configs: sample quality against guidance strength.

For each w in eval.guidance, every model of a guided workdir is sampled from
ONE shared starting noise and label list and scored as evaluation/loop.py
scores unguided models (digits only: Fréchet distance in the reference
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
guided_results.json (+ guided_results.md, guided_vs_w.png;
evaluation/report.py).

The loop, the digits scores and the fidelity are evaluation/loop.py's and
evaluation/scorers.py's; this module adds what is guided: the entries per
w, the models' loaders and the classifier's confidence.
"""

import time

import numpy as np

from diffusion_distillation.evaluation import loop as evaluation_loop
from diffusion_distillation.evaluation import report as report_lib
from diffusion_distillation.evaluation import scorers as scorers_lib
from diffusion_distillation.guided import workdir as guided_workdir
from diffusion_distillation.utils import errors


def plan(config, workdir: guided_workdir.GuidedWorkdir) -> list:
  """The entries to evaluate for what the workdir holds, w by w."""
  models = workdir.models()
  entries = []
  for w in config.eval.guidance:
    entries += evaluation_loop.plan(
        config,
        models,
        w=float(w),
        stage_one=workdir.has_stage_one(),
        student_samplers=tuple(config.eval.student_samplers),
    )
  return entries


def check_can_evaluate(config, workdir: guided_workdir.GuidedWorkdir):
  if config.dataset.name != 'digits':
    raise errors.InputError(
        'Guided --mode=eval scores the bundled digits only, not '
        f'{config.dataset.name!r}: write samples at a guidance strength '
        '(--mode=sample --config.sample.guidance=W) and score them with '
        'python -m diffusion_distillation.evaluation.fid (docs/reproducing.md).'
    )
  if 'eval' not in config:
    raise errors.InputError(
        'This config has no eval section; --mode=eval needs one (see '
        'configs/digits_guided.py).'
    )
  if not workdir.models():
    raise workdir.no_models()


def _softmax(logits):
  shifted = logits - logits.max(axis=1, keepdims=True)
  probs = np.exp(shifted)
  return probs / probs.sum(axis=1, keepdims=True)


class GuidedScorer:
  """The entry's network evaluations per sample, the digits FD and
  accuracy on the requested labels, the classifier's mean confidence (its
  largest softmax probability) and mean probability of the requested
  label."""

  def __init__(
      self,
      digits: scorers_lib.ClassifierScorer,
      samples: evaluation_loop.Samples,
  ):
    self._digits = digits
    self._samples = samples

  def run(self, entry: evaluation_loop.Entry, x) -> dict:
    labels = self._samples.labels
    probs = _softmax(np.asarray(self._digits.logits(x), np.float64))
    return {
        'network_evaluations': entry.network_evaluations,
        'fd': self._digits.fd(x),
        'class_accuracy': float(np.mean(np.argmax(probs, axis=1) == labels)),
        'mean_confidence': float(np.mean(np.max(probs, axis=1))),
        'label_probability': float(
            np.mean(probs[np.arange(len(labels)), labels])
        ),
    }


class SamplingSeconds:
  """The seconds the entry's own sampling took: they include the
  compilation where its (steps, method, model kind) is sampled first; w is
  an argument, so later strengths reuse it."""

  def __init__(self, samples: evaluation_loop.Samples):
    self._samples = samples

  def run(self, entry: evaluation_loop.Entry, x) -> dict:
    del x  # timed when it was drawn
    return {'sampling_seconds': self._samples.seconds[entry]}


def _load(run, entry: evaluation_loop.Entry):
  """The guided teacher (no w-embedding), the stage-one model or a
  student."""
  if entry.model == 'teacher':
    return run.workdir.load_teacher()
  if entry.model == 'guide':
    return run.workdir.load_stage_one()
  return evaluation_loop.load_saved_model(run, entry)


def evaluate(run, *, entries: list | None = None) -> dict:
  """Scores the guided workdir's models at every eval.guidance; writes and
  returns the results. `entries` (default: `plan`) selects a subset."""
  config, workdir, start = run.config, run.workdir, time.time()
  check_can_evaluate(config, workdir)
  models = workdir.models()
  samples = evaluation_loop.Samples(
      run, keep=True, load=lambda entry: _load(run, entry)
  )
  digits = scorers_lib.ClassifierScorer(
      config.eval, config.dataset, samples.labels
  )
  fidelities = scorers_lib.FidelityScorer(
      samples,
      lambda entry: evaluation_loop.reference_entry(config, models, entry.w),
  )
  return evaluation_loop.run_eval(
      run,
      plan(config, workdir) if entries is None else entries,
      samples,
      [GuidedScorer(digits, samples), fidelities, SamplingSeconds(samples)],
      summary={
          'guidance': [float(w) for w in config.eval.guidance],
          'reference_num_steps': config.eval.reference_num_steps,
          **digits.summary(),
      },
      report=report_lib.BY_GUIDANCE,
      start=start,
      time_rows=False,
  )
