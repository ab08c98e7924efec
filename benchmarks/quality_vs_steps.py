"""Sample quality against sampling steps on the bundled digits: the paper's
figure, measured here.

Trains a teacher on the digits (or reuses the one in --workdir), distills it
down to 1 step, then runs --mode=eval
(diffusion_distillation/evaluation/loop.py) and writes every figure, the
plot of FD against steps (distilled, undistilled DDIM, ancestral) and a
Markdown table, with each phase's duration and the
quality targets below checked against the measurements.

  python -m benchmarks.quality_vs_steps            # configs/digits.py
  python -m benchmarks.quality_vs_steps --quick    # a shorter budget
  python -m benchmarks.quality_vs_steps --smoke    # configs/test.py, seconds

Rerunning with the same --workdir reuses the trained models (their training
times are read from the models' metadata) and only evaluates again.
"""

import os
import tempfile

from absl import flags

from benchmarks import command
from benchmarks import speedup
from benchmarks import timing
from configs import digits
from configs import test as test_config
from diffusion_distillation import pipeline
from diffusion_distillation.evaluation import loop as evaluation_loop
from diffusion_distillation.runs import config_checks
from diffusion_distillation.runs import workdir as workdir_lib
from diffusion_distillation.utils import files

_HERE = os.path.dirname(os.path.abspath(__file__))


def _define_flags():
  """The command's flags; defined only when it runs (benchmarks/command.py)."""
  flags.DEFINE_bool(
      'quick', False, 'shorter teacher, 16 -> 1 distillation, 500 samples'
  )
  flags.DEFINE_bool(
      'smoke', False, 'the tiny test config: checks that the script runs'
  )
  flags.DEFINE_string(
      'workdir', None, 'run directory (default: benchmarks/results/tmp/...)'
  )
  flags.DEFINE_string(
      'out',
      None,
      'where the JSON, PNG and Markdown go (default: '
      'benchmarks/results/; a temp dir with --smoke)',
  )
  flags.mark_bool_flags_as_mutual_exclusive(['quick', 'smoke'])


# The quality targets. FD ratios are against the teacher's best DDIM FD
# over its step counts or the real-vs-real floor; accuracies are the
# reference classifier's; the time ratio is distillation down to 1 step
# against teacher training.
TARGETS = {
    'best_teacher_fd_over_floor': ('<=', 3.0),
    'teacher_ddim_accuracy_at_64_steps_and_more': ('>=', 0.97),
    'lowest_distilled_accuracy': ('>=', 0.95),
    'distilled_4_over_best_teacher_fd': ('<=', 1.25),
    'distilled_1_over_best_teacher_fd': ('<=', 2.5),
    'ddim_4_over_distilled_4_fd': ('>=', 3.0),
    'ddim_2_over_distilled_2_fd': ('>=', 3.0),
    'ddim_1_over_distilled_1_fd': ('>=', 3.0),
    'distill_to_1_over_teacher_seconds': ('<=', 1.0),
}


def quick_overrides(config):
  """A budget that runs in a few minutes on 2 CPU cores."""
  config.train.num_steps = 600
  config.distill.update(start_num_steps=16, steps_per_round=100)
  config.sample.teacher_num_steps = 16
  config.eval.update(
      num_samples=500,
      teacher_num_steps=(1, 2, 4, 8, 16, 64),
      ancestral_num_steps=(4, 16, 64),
      reference_num_steps=64,
  )
  return config


def target_checks(results: dict, timings: dict) -> dict:
  """Each target's measured value, threshold and whether it is met (None
  when the run lacks a model the target needs)."""
  fd, accuracy = {}, {}
  for row in results['entries']:
    curve = 'distilled' if row['model_steps'] else row['method']
    fd[(curve, row['num_steps'])] = row['fd']
    accuracy[(curve, row['num_steps'])] = row['class_accuracy']
  teacher_fds = [v for (curve, _), v in fd.items() if curve == 'ddim']
  best = min(teacher_fds) if teacher_fds else None

  def ratio(a, b):
    return None if a is None or not b else a / b

  def lowest(values):
    values = [v for v in values if v is not None]
    return min(values) if values else None

  rounds = timings['distill_round_seconds']
  round_seconds = list(rounds.values())
  distill_seconds = (
      sum(round_seconds)
      if round_seconds and None not in round_seconds and 1 in rounds
      else None
  )
  measured = {
      'best_teacher_fd_over_floor': ratio(best, results['real_vs_real_fd']),
      'teacher_ddim_accuracy_at_64_steps_and_more': lowest(
          v for (curve, n), v in accuracy.items() if curve == 'ddim' and n >= 64
      ),
      'lowest_distilled_accuracy': lowest(
          v for (curve, _), v in accuracy.items() if curve == 'distilled'
      ),
      'distilled_4_over_best_teacher_fd': ratio(fd.get(('distilled', 4)), best),
      'distilled_1_over_best_teacher_fd': ratio(fd.get(('distilled', 1)), best),
      'distill_to_1_over_teacher_seconds': ratio(
          distill_seconds, timings['teacher_seconds']
      ),
  }
  for n in (4, 2, 1):
    measured[f'ddim_{n}_over_distilled_{n}_fd'] = ratio(
        fd.get(('ddim', n)), fd.get(('distilled', n))
    )
  checks = {}
  for name, (direction, threshold) in TARGETS.items():
    value = measured[name]
    met = (
        None
        if value is None
        else (value <= threshold if direction == '<=' else value >= threshold)
    )
    checks[name] = {
        'measured': value,
        'target': f'{direction} {threshold}',
        'met': met,
    }
  checks['best_teacher_fd'] = best
  return checks


def main(args):
  variant = 'smoke' if args.smoke else 'quick' if args.quick else 'full'
  config = test_config.get_config() if args.smoke else digits.get_config()
  if args.quick:
    config = config_checks.check_config(quick_overrides(config))
  suffix = '' if variant == 'full' else f'_{variant}'
  workdir = args.workdir or (
      tempfile.mkdtemp(prefix='quality_smoke_')
      if args.smoke
      else os.path.join(_HERE, 'results', 'tmp', f'quality_vs_steps{suffix}')
  )
  out = args.out or (workdir if args.smoke else os.path.join(_HERE, 'results'))

  run = pipeline.Run(config, workdir)
  run.record_config()
  results, wall = timing.run_phases(
      run,
      (
          ('teacher', pipeline.train_teacher),
          ('distill', pipeline.distill),
          ('eval', evaluation_loop.evaluate),
      ),
  )

  models = workdir_lib.saved_models(workdir)
  timings = {
      # Training times travel with the models, so a reused workdir still
      # reports what its training cost.
      # (None for models saved before the pipeline recorded it).
      'teacher_seconds': workdir_lib.model_meta(workdir, 0).get('seconds'),
      'distill_round_seconds': {
          n: workdir_lib.model_meta(workdir, n).get('seconds')
          for n in models
          if n > 0
      },
      'eval_seconds': wall['eval'],
      'this_run_seconds': wall,
  }
  summary = {
      'variant': variant,
      **timing.provenance(),
      'config': {
          'train_steps': config.train.num_steps,
          'distill': (
              f'{config.distill.start_num_steps} -> '
              f'{config.distill.end_num_steps}, '
              f'{config.distill.steps_per_round} steps/round'
          ),
      },
      'timings': timings,
      'targets': target_checks(results, timings),
      'equal_quality_speedup': speedup.equal_quality(results),
      'eval': results,
  }
  os.makedirs(out, exist_ok=True)
  stem = os.path.join(out, f'quality_vs_steps{suffix}')
  files.write_json(summary, stem + '.json')
  evaluation_loop.plot_fd_vs_steps(results, stem + '.png')
  with open(stem + '.md', 'w') as f:
    f.write(
        f'{timing.provenance_line(summary)}; '
        f'{summary["config"]["distill"]}, teacher '
        f'{summary["config"]["train_steps"]} steps.\n\n'
    )
    f.write(evaluation_loop.markdown_table(results))
  print(evaluation_loop.markdown_table(results))
  print('Equal-quality speed-up against undistilled DDIM:')
  print(speedup.markdown(summary['equal_quality_speedup']))
  for name, check in summary['targets'].items():
    print(f'{name}: {check}')
  print(f'Wrote {stem}.json, .png and .md')
  return summary


if __name__ == '__main__':
  command.run(_define_flags, main)
