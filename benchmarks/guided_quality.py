"""Guided distillation on the bundled digits: quality against guidance
strength and steps, and what one student saves.

Trains the guided teacher, stage one and the rounds 32 -> 1 of
configs/digits_guided.py (or reuses them in --workdir), runs the guided
--mode=eval (diffusion_distillation/guided/evaluation.py: at w = 0, 0.5, 1,
2, 4 the guided teacher with DDIM at 64 steps and undistilled at 8, 4, 2, 1,
the stage-one model, and each student at its steps with DDIM and the
stochastic sampler), measures sampling time, and writes the figures, a plot
of accuracy and FD against w, a Markdown table, each phase's duration and
its targets checked against the measurements.

  python -m benchmarks.guided_quality            # configs/digits_guided.py
  python -m benchmarks.guided_quality --smoke    # configs/test_guided.py

Rerunning with the same --workdir reuses the trained models (their training
times are read from the models' metadata) and only evaluates again.
"""

import os
import tempfile
import time

import numpy as np
from absl import flags

from benchmarks import command
from benchmarks import timing
from configs import digits_guided
from configs import test_guided
from diffusion_distillation import pipeline
from diffusion_distillation.evaluation import loop as evaluation_loop
from diffusion_distillation.evaluation import report as report_lib
from diffusion_distillation.guided import evaluation as guided_evaluation
from diffusion_distillation.guided import pipeline as guided_pipeline
from diffusion_distillation.guided import workdir as guided_workdir
from diffusion_distillation.runs import workdir as workdir_lib
from diffusion_distillation.utils import files

_HERE = os.path.dirname(os.path.abspath(__file__))


def _define_flags():
  """The command's flags; defined only when it runs (benchmarks/command.py)."""
  flags.DEFINE_bool(
      'smoke', False, 'the tiny guided test config: checks that the script runs'
  )
  flags.DEFINE_string(
      'workdir',
      None,
      'run directory (default: benchmarks/results/tmp/guided_quality)',
  )
  flags.DEFINE_string(
      'out',
      None,
      'where the JSON, PNG and Markdown go (default: benchmarks/results/; '
      'the workdir with --smoke)',
  )
  flags.DEFINE_integer(
      'timing_repeats',
      3,
      'sampling-time measurements per sampler (the median is reported)',
  )


# The targets (w = 1 for the FD ones; "reference" is the guided
# teacher with eval.reference_num_steps DDIM steps).
ACCURACY_RISE_W = (0.0, 2.0)  # reference accuracy at w = 2 above w = 0
STUDENT_STEPS = 4
FOLLOW_TOLERANCE = 0.02  # |accuracy(4-step student) - reference| at every w
FD_W = 1.0
STUDENT_OVER_BEST_TEACHER_FD = 1.3  # at most
DDIM_OVER_STUDENT_FD = 2.0  # at least


def _row(results, model, method, num_steps, w):
  for row in results['entries']:
    if (row['model'], row['method'], row['num_steps'], row['w']) == (
        model,
        method,
        num_steps,
        w,
    ):
      return row
  return None


def target_checks(results: dict, reference_steps: int) -> dict:
  """Each target's measured value, threshold and whether it is met (None
  when the run lacks an entry the target needs)."""
  ref = lambda w: _row(results, 'teacher', 'ddim', reference_steps, w)
  student = lambda w: _row(results, 'student', 'ddim', STUDENT_STEPS, w)
  checks = {}

  low, high = (ref(w) for w in ACCURACY_RISE_W)
  rise = (
      None
      if low is None or high is None
      else high['class_accuracy'] - low['class_accuracy']
  )
  checks['accuracy_rise_w2_over_w0'] = {
      'measured': rise,
      'target': '> 0',
      'met': None if rise is None else rise > 0,
  }

  gaps = {}
  for w in results['guidance']:
    if ref(w) and student(w):
      gaps[w] = student(w)['class_accuracy'] - ref(w)['class_accuracy']
  worst = max(gaps.values(), key=abs) if gaps else None
  checks['student_4_accuracy_gap_worst_w'] = {
      'measured': worst,
      'per_w': {f'{w:g}': gap for w, gap in gaps.items()},
      'target': f'|gap| <= {FOLLOW_TOLERANCE}',
      'met': None if worst is None else abs(worst) <= FOLLOW_TOLERANCE,
  }

  teacher_fds = [
      row['fd']
      for row in results['entries']
      if row['model'] == 'teacher'
      and row['method'] == 'ddim'
      and row['w'] == FD_W
  ]
  best = min(teacher_fds) if teacher_fds else None
  student_row = student(FD_W)
  ddim_row = _row(results, 'teacher', 'ddim', STUDENT_STEPS, FD_W)
  ratio = lambda a, b: None if a is None or not b else a / b
  measured = ratio(student_row and student_row['fd'], best)
  checks['student_4_over_best_teacher_fd_w1'] = {
      'measured': measured,
      'best_teacher_fd': best,
      'target': f'<= {STUDENT_OVER_BEST_TEACHER_FD}',
      'met': (
          None if measured is None else measured <= STUDENT_OVER_BEST_TEACHER_FD
      ),
  }
  measured = ratio(
      ddim_row and ddim_row['fd'], student_row and student_row['fd']
  )
  checks['ddim_4_over_student_4_fd_w1'] = {
      'measured': measured,
      'target': f'>= {DDIM_OVER_STUDENT_FD}',
      'met': None if measured is None else measured >= DDIM_OVER_STUDENT_FD,
  }
  return checks


def sampling_times(run, *, repeats: int) -> dict:
  """Median seconds to draw eval.num_samples samples (compiled beforehand)
  with the 1- and 4-step students and guided DDIM at the teacher's step
  counts, at w = sample.guidance; the speed-ups are ratios of these."""
  settings = run.config.eval
  sampler, _, labels = evaluation_loop.eval_sampler(run)
  models = run.workdir.models()
  ways = []
  for n in sorted({1, STUDENT_STEPS} & set(models)):
    ways.append((f'student_{n}', run.workdir.load(n), n, n))
  if 0 in models:
    teacher = run.workdir.load_teacher()
    for n in sorted(set(settings.teacher_num_steps)):
      ways.append((f'guided_ddim_{n}', teacher, n, 2 * n))
  times = {}
  for name, params, num_steps, evaluations in ways:
    draw = lambda params=params, num_steps=num_steps: sampler.sample(
        params,
        num_steps=num_steps,
        num_samples=settings.num_samples,
        labels=labels,
        seed=settings.seed,
    )
    draw()  # compile
    seconds = []
    for _ in range(repeats):
      start = time.perf_counter()
      draw()
      seconds.append(time.perf_counter() - start)
    times[name] = {
        'seconds': float(np.median(seconds)),
        'all_seconds': seconds,
        'network_evaluations_per_sample': evaluations,
    }
  speedups = {}
  if 'student_1' in times:
    for name, entry in times.items():
      if name.startswith('guided_ddim_'):
        speedups[f'student_1_vs_{name}'] = {
            'measured': entry['seconds'] / times['student_1']['seconds'],
            'evaluation_ratio': entry['network_evaluations_per_sample'],
        }
  key = f'guided_ddim_{STUDENT_STEPS}'
  if f'student_{STUDENT_STEPS}' in times and key in times:
    speedups[f'student_{STUDENT_STEPS}_vs_{key}'] = {
        'measured': (
            times[key]['seconds'] / times[f'student_{STUDENT_STEPS}']['seconds']
        ),
        'evaluation_ratio': 2.0,
    }
  return {
      'num_samples': settings.num_samples,
      'batch_size': settings.batch_size,
      'w': run.config.sample.guidance,
      'repeats': repeats,
      'samplers': times,
      'speedups': speedups,
  }


def main(args):
  variant = 'smoke' if args.smoke else 'full'
  config = (
      test_guided.get_config() if args.smoke else digits_guided.get_config()
  )
  suffix = '' if variant == 'full' else f'_{variant}'
  workdir = args.workdir or (
      tempfile.mkdtemp(prefix='guided_smoke_')
      if args.smoke
      else os.path.join(_HERE, 'results', 'tmp', 'guided_quality')
  )
  out = args.out or (workdir if args.smoke else os.path.join(_HERE, 'results'))

  run = pipeline.Run(config, workdir, wing=guided_pipeline.WING)
  run.record_config()
  results, wall = timing.run_phases(
      run,
      (
          ('teacher', pipeline.train_teacher),
          ('guide', guided_pipeline.guide),
          ('distill', guided_pipeline.distill),
          ('eval', guided_evaluation.evaluate),
      ),
  )
  start = time.time()
  speed = sampling_times(run, repeats=args.timing_repeats)
  wall['sampling_times'] = time.time() - start

  models = workdir_lib.saved_models(workdir)
  # Training times travel with the models, so a reused workdir still
  # reports what its training cost (each phase's last leg if resumed).
  training = {
      'teacher_seconds': workdir_lib.model_meta(workdir, 0).get('seconds'),
      'stage_one_seconds': (
          guided_workdir.stage_one_meta(workdir).get('seconds')
      ),
      'distill_round_seconds': {
          n: workdir_lib.model_meta(workdir, n).get('seconds')
          for n in models
          if n > 0
      },
  }
  parts = [training['teacher_seconds'], training['stage_one_seconds']]
  parts += list(training['distill_round_seconds'].values())
  training['total_seconds'] = None if None in parts else sum(parts)
  summary = {
      'variant': variant,
      **timing.provenance(),
      'load_average': os.getloadavg(),
      'config': {
          'train_steps': config.train.num_steps,
          'guide_steps': config.guide.num_steps,
          'p_uncond': config.guidance.p_uncond,
          'w_range': [config.guidance.w_min, config.guidance.w_max],
          'distill': (
              f'{config.distill.start_num_steps} -> '
              f'{config.distill.end_num_steps}, '
              f'{config.distill.steps_per_round} steps/round'
          ),
      },
      'training': training,
      'this_run_seconds': wall,
      'sampling_times': speed,
      'targets': target_checks(results, config.eval.reference_num_steps),
      'eval': results,
  }
  os.makedirs(out, exist_ok=True)
  stem = os.path.join(out, f'guided_quality{suffix}')
  files.write_json(summary, stem + '.json')
  report_lib.plot_against_w(results, stem + '.png')
  table = report_lib.guided_markdown_table(results)
  with open(stem + '.md', 'w') as f:
    f.write(
        f'{timing.provenance_line(summary)}; teacher '
        f'{config.train.num_steps} steps, '
        f'stage one {config.guide.num_steps}, {summary["config"]["distill"]}.'
        '\n\n'
    )
    f.write(table)
  print(table)
  for name, check in summary['targets'].items():
    print(f'{name}: {check}')
  for name, speedup in speed['speedups'].items():
    print(f'{name}: {speedup}')
  print(f'Wrote {stem}.json, .png and .md')
  return summary


if __name__ == '__main__':
  command.run(_define_flags, main)
