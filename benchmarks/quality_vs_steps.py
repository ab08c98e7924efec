"""Sample quality against sampling steps: the paper's figure, measured here.

Trains a teacher (or resumes the one in --workdir), distills it down to 1
step, then runs --mode=eval (diffusion_distillation/evaluation/loop.py) and
writes every figure, the plot of FD against steps (distilled, undistilled
DDIM, ancestral), the equal-quality speed-ups and a Markdown table, with
each phase's duration and the dataset's quality targets checked against
the measurements (the paper's CIFAR-10 ratios beside them).

  python -m benchmarks.quality_vs_steps            # configs/digits.py
  python -m benchmarks.quality_vs_steps --config=configs/fashion_mnist.py
  python -m benchmarks.quality_vs_steps --quick    # a shorter budget
  python -m benchmarks.quality_vs_steps --smoke    # configs/test.py, seconds

Results: benchmarks/results/quality_vs_steps.{json,md,png} for the digits,
benchmarks/results/<config name>.{json,md,png} for another config (with
_quick or _smoke before the suffix for those variants). Fashion-MNIST needs
its data prepared once (`python -m diffusion_distillation.data.prepare
fashion_mnist`).

Resumable: rerunning with the same --workdir resumes the training where it
stopped (a finished model's training time is read from its metadata) and
the evaluation at the first entry not yet scored (evaluation/loop.py, RowCache).
"""

import dataclasses
import functools
import os
import tempfile

from absl import flags
from ml_collections import config_flags

from benchmarks import command
from benchmarks import speedup
from benchmarks import timing
from configs import test as test_config
from diffusion_distillation import pipeline
from diffusion_distillation.evaluation import loop as evaluation_loop
from diffusion_distillation.runs import config_checks
from diffusion_distillation.runs import workdir as workdir_lib
from diffusion_distillation.utils import files

_HERE = os.path.dirname(os.path.abspath(__file__))


def _define_flags():
  """The command's flags; defined only when it runs (benchmarks/command.py)."""
  config_flags.DEFINE_config_file(
      'config',
      os.path.join(_HERE, '..', 'configs', 'digits.py'),
      'the config whose recipe is measured (digits or fashion_mnist)',
  )
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
# against teacher training; the speed-up is the undistilled DDIM steps that
# reach the 4-step student's FD, over 4 (speedup.py).
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


# Fashion-MNIST's, the paper's CIFAR-10 experiment at 28x28 (issue: the
# targets table of the Fashion-MNIST benchmark).
FASHION_MNIST_TARGETS = {
    'distilled_4_over_best_teacher_fd': ('<=', 1.25),
    'distilled_1_over_best_teacher_fd': ('<=', 3.0),
    'ddim_4_over_distilled_4_fd': ('>=', 3.0),
    'equal_quality_speedup_at_4': ('>=', 16.0),
    'distill_to_1_over_teacher_seconds': ('<=', 1.0),
    'best_teacher_fd_over_floor': ('<=', 3.0),
    'reference_classifier_test_accuracy': ('>=', 0.90),
}

# The same ratios in the paper's CIFAR-10 FIDs (its Figure 4 and Table 2:
# the teacher's best about 2.4, DDIM about 9.7 at 16 steps; the 4-step
# student 3.00 reaches what DDIM reaches at about 128 steps, 3.3).
PAPER_CIFAR10 = {
    'distilled_4_over_best_teacher_fd': 3.00 / 2.4,
    'distilled_1_over_best_teacher_fd': 9.12 / 2.4,
    'equal_quality_speedup_at_4': 128 / 4,
    'distill_to_1_over_teacher_seconds': 1.0,
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


def fashion_mnist_quick_overrides(config):
  """A tiny network and budget on the real Fashion-MNIST: a few minutes on
  2 CPU cores, checking the whole path on real data, not the recipe."""
  config.model.update(ch=8, emb_ch=16, num_groups=4)
  config.train.update(num_steps=40, warmup_steps=10)
  config.distill.update(start_num_steps=4, steps_per_round=10)
  config.sample.update(num_samples=50, batch_size=50, teacher_num_steps=4)
  config.eval.update(
      num_samples=50,
      batch_size=50,
      teacher_num_steps=(1, 2, 4, 8),
      ancestral_num_steps=(4,),
      reference_num_steps=8,
      classifier_train_steps=100,
  )
  config.checkpoint.every_steps = 20
  return config


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """What the benchmark measures of one dataset: the file stem of its
  results, its targets and its --quick budget."""

  stem: str
  targets: dict
  quick: callable
  paper: dict = dataclasses.field(default_factory=dict)


BENCHMARKS = {
    'digits': Benchmark('quality_vs_steps', TARGETS, quick_overrides),
    'fashion_mnist': Benchmark(
        'fashion_mnist',
        FASHION_MNIST_TARGETS,
        fashion_mnist_quick_overrides,
        PAPER_CIFAR10,
    ),
}


def measured_ratios(results: dict, timings: dict, speedups: list) -> dict:
  """Every figure a target may check (None when the run lacks a model it
  needs), and the teacher's best DDIM FD."""
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
  speedup_at = {row['student_steps']: row['speedup'] for row in speedups}
  measured = {
      'best_teacher_fd': best,
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
      'equal_quality_speedup_at_4': speedup_at.get(4),
      'reference_classifier_test_accuracy': results['reference_network'][
          'test_accuracy'
      ],
  }
  for n in (4, 2, 1):
    measured[f'ddim_{n}_over_distilled_{n}_fd'] = ratio(
        fd.get(('ddim', n)), fd.get(('distilled', n))
    )
  return measured


def target_checks(
    results: dict,
    timings: dict,
    speedups: list = (),
    targets: dict = TARGETS,
    paper: dict | None = None,
) -> dict:
  """Each target's measured value, threshold, whether it is met (None when
  the run lacks a model the target needs) and the paper's CIFAR-10 value
  where it has one."""
  measured = measured_ratios(results, timings, list(speedups))
  checks = {}
  for name, (direction, threshold) in targets.items():
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
    if paper and name in paper:
      checks[name]['paper_cifar10'] = paper[name]
  checks['best_teacher_fd'] = measured['best_teacher_fd']
  return checks


def _config(args):
  """The config, its benchmark, and the variant ('full', 'quick',
  'smoke')."""
  variant = 'smoke' if args.smoke else 'quick' if args.quick else 'full'
  config = test_config.get_config() if args.smoke else args.config
  name = config.dataset.name
  if name not in BENCHMARKS:
    raise SystemExit(
        f'No quality benchmark for dataset {name!r}; give one of '
        f'{", ".join(BENCHMARKS)}.'
    )
  benchmark = BENCHMARKS[name]
  if args.quick:
    config = benchmark.quick(config)
  return config_checks.check_config(config), benchmark, variant


def main(args):
  config, benchmark, variant = _config(args)
  suffix = '' if variant == 'full' else f'_{variant}'
  stem_name = f'{"quality_vs_steps" if args.smoke else benchmark.stem}{suffix}'
  workdir = args.workdir or (
      tempfile.mkdtemp(prefix='quality_smoke_')
      if args.smoke
      else os.path.join(_HERE, 'results', 'tmp', stem_name)
  )
  out = args.out or (workdir if args.smoke else os.path.join(_HERE, 'results'))

  run = pipeline.Run(config, workdir)
  run.record_config()
  results, wall = timing.run_phases(
      run,
      (
          ('teacher', pipeline.train_teacher),
          ('distill', pipeline.distill),
          ('eval', functools.partial(evaluation_loop.evaluate, keep_rows=True)),
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
  speedups = speedup.equal_quality(results)
  summary = {
      'variant': variant,
      'dataset': config.dataset.name,
      **timing.provenance(),
      'config': {
          'train_steps': config.train.num_steps,
          'distill': (
              f'{config.distill.start_num_steps} -> '
              f'{config.distill.end_num_steps}, '
              f'{config.distill.steps_per_round} steps/round'
          ),
          'num_samples_per_entry': config.eval.num_samples,
      },
      'timings': timings,
      'targets': target_checks(
          results, timings, speedups, benchmark.targets, benchmark.paper
      ),
      'equal_quality_speedup': speedups,
      'eval': results,
  }
  os.makedirs(out, exist_ok=True)
  stem = os.path.join(out, stem_name)
  files.write_json(summary, stem + '.json')
  evaluation_loop.plot_fd_vs_steps(results, stem + '.png')
  with open(stem + '.md', 'w') as f:
    f.write(
        f'{timing.provenance_line(summary)}; '
        f'{summary["config"]["distill"]}, teacher '
        f'{summary["config"]["train_steps"]} steps.\n\n'
    )
    f.write(evaluation_loop.markdown_table(results))
    f.write('\nEqual-quality speed-up against undistilled DDIM:\n\n')
    f.write(speedup.markdown(speedups))
    f.write('\n' + targets_markdown(summary['targets']))
  print(evaluation_loop.markdown_table(results))
  print('Equal-quality speed-up against undistilled DDIM:')
  print(speedup.markdown(speedups))
  print(targets_markdown(summary['targets']))
  print(f'Wrote {stem}.json, .png and .md')
  return summary


def targets_markdown(checks: dict) -> str:
  """The targets as a Markdown table, the paper's CIFAR-10 value beside."""
  lines = [
      '| target | measured | wanted | met | paper (CIFAR-10) |',
      '|---|---:|---:|---|---:|',
  ]
  for name, check in checks.items():
    if not isinstance(check, dict):
      continue
    value, paper = check['measured'], check.get('paper_cifar10')
    lines.append(
        f'| {name} | {"" if value is None else f"{value:.3f}"} '
        f'| {check["target"]} | '
        f'{ {True: "yes", False: "**no**", None: "n/a"}[check["met"]]} '
        f'| {"" if paper is None else f"{paper:.2f}"} |'
    )
  return '\n'.join(lines) + '\n'


if __name__ == '__main__':
  command.run(_define_flags, main)
