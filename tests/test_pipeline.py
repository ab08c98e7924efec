"""End to end on the tiny config: train, distill two rounds, sample; resume
after SIGKILL; data parallelism; no recompilation; bad input."""

import json
import logging
import os
import re
import signal

import jax
import numpy as np
import pytest

from diffusion_distillation import pipeline
from diffusion_distillation.runs import config_checks
from diffusion_distillation.runs import workdir as workdir_lib
from diffusion_distillation.training import phases
from diffusion_distillation.utils import errors
from tests.helpers import TEST_CONFIG
from tests.helpers import TWO_CPU_DEVICES
from tests.helpers import assert_trees_close
from tests.helpers import kill_main_when_saved
from tests.helpers import run_python
from tests.helpers import saved_params
from tests.helpers import tiny_config


def run_logging_compiles(config, workdir, mode, run_mode=pipeline.run_mode):
  """run_mode, also returning the 'Compiling ...' lines JAX logged."""
  records = []
  handler = logging.Handler()
  handler.emit = records.append
  jax_logger = logging.getLogger('jax')
  jax_logger.addHandler(handler)
  try:
    with jax.log_compiles(True):
      timings = run_mode(config, workdir, mode)
  finally:
    jax_logger.removeHandler(handler)
  compiled = [
      r.getMessage() for r in records if r.getMessage().startswith('Compiling')
  ]
  return timings, compiled


@pytest.fixture(scope='module')
def trained_workdir(tmp_path_factory):
  """A finished tiny run (teacher, rounds 4 -> 2 -> 1, samples), with the
  compilations it logged."""
  workdir = str(tmp_path_factory.mktemp('run') / 'workdir')
  timings, compiled = run_logging_compiles(tiny_config(), workdir, 'all')
  return workdir, compiled, timings


@pytest.mark.slow
def test_end_to_end_writes_models_samples_and_grids(trained_workdir):
  workdir, _, timings = trained_workdir
  assert set(timings) == {'train_teacher', 'distill', 'sample'}
  assert workdir_lib.saved_models(workdir) == [0, 1, 2]
  samples = os.path.join(workdir, 'samples')
  for name in ('samples_4_teacher', 'samples_2', 'samples_1'):
    with np.load(os.path.join(samples, f'{name}.npz')) as f:
      assert f['arr_0'].dtype == np.uint8
      assert f['arr_0'].shape == (8, 8, 8, 1)
      np.testing.assert_array_equal(f['arr_1'], np.arange(8) % 10)
    assert os.path.getsize(os.path.join(samples, f'{name}.png')) > 0
  for grid in ('grid_teacher_4', 'grid_2', 'grid_1'):
    assert os.path.exists(os.path.join(samples, f'{grid}.png'))
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(workdir))
  # Distillation moved the student away from its teacher.
  config = tiny_config()
  teacher = saved_params(workdir, 0, config)
  student = saved_params(workdir, 1, config)
  diffs = [
      float(np.max(np.abs(a - b)))
      for a, b in zip(
          jax.tree_util.tree_leaves(teacher), jax.tree_util.tree_leaves(student)
      )
  ]
  assert max(diffs) > 0


@pytest.mark.slow
def test_no_recompilation_inside_or_across_rounds(trained_workdir):
  _, compiled, _ = trained_workdir
  count = lambda name: sum(f'Compiling jit({name})' in m for m in compiled)
  assert count('train_step') == 1, compiled
  assert count('distill_step') == 1, compiled  # two rounds, one compilation


@pytest.mark.slow
def test_rerun_of_a_finished_run_does_nothing(trained_workdir):
  workdir, _, _ = trained_workdir
  before = saved_params(workdir, 1, tiny_config())
  _, compiled = run_logging_compiles(tiny_config(), workdir, 'distill')
  assert not any('distill_step' in line for line in compiled), compiled
  assert_trees_close(saved_params(workdir, 1, tiny_config()), before, atol=0)


@pytest.mark.slow
def test_resume_after_sigkill_mid_round_matches_uninterrupted(
    trained_workdir, tmp_path
):
  teacher_workdir, _, _ = trained_workdir
  overrides = {
      'distill.steps_per_round': 12,
      'checkpoint.every_steps': 2,
      'distill.teacher_checkpoint': teacher_workdir,
  }
  reference = str(tmp_path / 'reference')
  pipeline.run_mode(tiny_config(**overrides), reference, 'distill')

  resumed = str(tmp_path / 'resumed')
  # One CPU device, as the in-process reference (two would reassociate the
  # batch mean).
  flags = [
      f'--config={TEST_CONFIG}',
      f'--workdir={resumed}',
      '--mode=distill',
      '--cpu_devices=1',
  ]
  flags += [f'--config.{k}={v}' for k, v in overrides.items()]
  # Killed as soon as the first checkpoint of the first round is on disk:
  # five more dispatches, each with a save, remain in that round.
  kill_main_when_saved(
      flags, os.path.join(resumed, 'distill', '2'), what='the first round'
  )
  assert workdir_lib.saved_models(resumed) == [], 'killed after the round'

  result = run_python(['-m', 'diffusion_distillation.main'] + flags)
  assert result.returncode == 0, result.stderr[-3000:]
  assert workdir_lib.saved_models(resumed) == [1, 2]
  for num_steps in (2, 1):
    assert_trees_close(
        saved_params(resumed, num_steps, tiny_config(**overrides)),
        saved_params(reference, num_steps, tiny_config(**overrides)),
    )


@pytest.mark.slow
def test_doubled_final_rounds_train_twice_as_long(trained_workdir, tmp_path):
  # The tiny chain 4 -> 2 -> 1 is all final rounds: 8 updates each, not 4.
  teacher_workdir, _, _ = trained_workdir
  config = tiny_config(**{
      'distill.final_rounds_updates_multiplier': 2,
      'distill.teacher_checkpoint': teacher_workdir,
  })
  workdir = str(tmp_path / 'w')
  pipeline.run_mode(config, workdir, 'distill')
  for num_steps in (2, 1):
    assert workdir_lib.model_meta(workdir, num_steps)['distill_steps'] == 8
  steps = sorted(
      int(name)
      for name in os.listdir(os.path.join(workdir, phases.DISTILL.checkpoints))
      if name.isdigit()
  )
  assert steps[-1] == 16, steps  # the second round ends at 8 + 8


# A teacher long enough that a signal sent once its first checkpoint is on
# disk lands mid-training: 500 dispatches, a checkpoint every 50.
_LONG_TEACHER = {
    'train.num_steps': 1000,
    'checkpoint.every_steps': 100,
    'log_every_steps': 100,
}


@pytest.fixture(scope='module')
def long_teacher(tmp_path_factory):
  """The teacher of an uninterrupted _LONG_TEACHER run."""
  workdir = str(tmp_path_factory.mktemp('long') / 'reference')
  config = tiny_config(**_LONG_TEACHER)
  pipeline.run_mode(config, workdir, 'train')
  return saved_params(workdir, 0, config)


@pytest.mark.slow
@pytest.mark.parametrize(
    'signum,status', [(signal.SIGTERM, 143), (signal.SIGINT, 130)]
)
def test_a_signal_mid_teacher_saves_stops_in_one_line_and_resumes_exactly(
    long_teacher, tmp_path, signum, status
):
  workdir = str(tmp_path / 'w')
  # One CPU device, as the in-process reference.
  flags = [
      f'--config={TEST_CONFIG}',
      f'--workdir={workdir}',
      '--mode=train',
      '--cpu_devices=1',
  ]
  flags += [f'--config.{k}={v}' for k, v in _LONG_TEACHER.items()]
  returncode, stderr = kill_main_when_saved(
      flags,
      os.path.join(workdir, 'teacher', '100'),
      what='the teacher',
      signum=signum,
  )
  assert returncode == status, stderr[-3000:]
  assert 'Traceback' not in stderr and 'KeyboardInterrupt' not in stderr
  last = stderr.strip().splitlines()[-1]
  stopped = re.fullmatch(
      f'stopped by {signum.name} at train step (\\d+), saved as '
      f'{re.escape(workdir)}/teacher/(\\d+); rerun the same command to resume',
      last,
  )
  assert stopped, last
  step = int(stopped.group(1))
  assert stopped.group(2) == str(step) and 100 <= step < 1000
  assert os.path.exists(
      os.path.join(workdir, 'teacher', str(step), 'commit_success.txt')
  )
  assert not os.path.exists(os.path.join(workdir, 'lock'))
  assert workdir_lib.saved_models(workdir) == []

  result = run_python(['-m', 'diffusion_distillation.main'] + flags)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'Resuming teacher training at step {step}' in result.stderr
  assert_trees_close(
      saved_params(workdir, 0, tiny_config(**_LONG_TEACHER)),
      long_teacher,
      atol=0,
  )


_DATA_PARALLEL_SCRIPT = r"""
import json, sys
import jax, numpy as np
from diffusion_distillation import pipeline
from diffusion_distillation.training import trainer as trainer_lib
from diffusion_distillation.utils import sharding
from tests.helpers import tiny_config

# One substep compiles twice as fast.
config = tiny_config(**{'train.substeps': 1, 'distill.substeps': 1})
results = {}
for name, devices in (('one', jax.devices()[:1]), ('two', jax.devices()[:2])):
  run = pipeline.Run(config, sys.argv[1] + '/' + name,
                     mesh=sharding.make_mesh(devices))
  # Teacher updates (dropout on), then distillation updates against them.
  train = trainer_lib.build(config, 'train', run.mesh)
  state = train.fresh_state(train.init_params(jax.random.key(0)), 0)
  for step in range(3):
    state, _ = train.update(state, run.batch_at('train', step))
  teacher = state.params
  distill = trainer_lib.build(config, 'distill', run.mesh)
  student = distill.fresh_state(teacher, 2)
  for step in range(3):
    student, _ = distill.update(student, run.batch_at('distill', step),
                                teacher)
  results[name] = [np.asarray(x) for x in
                   jax.tree_util.tree_leaves((state.params, student.params))]
diff = max(float(np.max(np.abs(a - b)))
           for a, b in zip(results['one'], results['two']))
moved = max(float(np.max(np.abs(a))) for a in results['one'])
print(json.dumps({'devices': jax.device_count(), 'max_diff': diff,
                  'max_abs': moved}))
"""


@pytest.mark.slow
def test_two_devices_match_one_device_at_the_same_global_batch(tmp_path):
  result = run_python(
      ['-c', _DATA_PARALLEL_SCRIPT, str(tmp_path)],
      env=TWO_CPU_DEVICES,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report['devices'] == 2
  assert report['max_abs'] > 0
  # Equal up to float reassociation of the batch mean across devices.
  assert report['max_diff'] < 1e-4 * report['max_abs'], report


# ----------------------------------------------------------------------------
# Bad input: one clear error, and nothing already written is touched.


def _snapshot(workdir):
  out = {}
  for root, _, files in os.walk(workdir):
    for name in files:
      path = os.path.join(root, name)
      out[path] = (os.path.getsize(path), os.path.getmtime(path))
  return out


@pytest.mark.parametrize(
    'overrides,message',
    [
        (
            {'distill.start_num_steps': 12, 'distill.end_num_steps': 1},
            'is not a power of two',
        ),
        (
            {'distill.start_num_steps': 4, 'distill.end_num_steps': 0},
            'need start > end >= 1',
        ),
        (
            {'model.logsnr_schedule.name': 'linear'},
            "Unknown logsnr schedule 'linear'",
        ),
        ({'dataset.name': 'mnist'}, "Unknown dataset.name 'mnist'"),
        ({'sample.sampler': 'euler'}, "Unknown sample.sampler 'euler'"),
        ({'model.mean_type': 'z'}, "Unknown mean_type 'z'"),
        (
            {'model.mean_loss_weight_type': 'l1'},
            "Unknown mean_loss_weight_type 'l1'",
        ),
        ({'train.batch_size': 7, 'train.substeps': 1}, None),
    ],
)
def test_bad_config_values_are_refused_before_any_write(
    overrides, message, tmp_path
):
  workdir = str(tmp_path / 'w')
  config = tiny_config(**overrides)
  if message is None:  # batch 7 fits one device but not three
    config_checks.check_config(config, num_devices=1)
    with pytest.raises(
        errors.InputError,
        match=r'not divisible by the 3 devices; .* \(or --cpu_devices=1\)',
    ):
      config_checks.check_config(config, num_devices=3)
    return
  with pytest.raises(errors.InputError, match=message):
    pipeline.run_mode(config, workdir, 'all')
  assert not os.path.exists(workdir)


def test_missing_teacher_is_refused(tmp_path):
  with pytest.raises(errors.InputError, match='Missing teacher'):
    pipeline.run_mode(tiny_config(), str(tmp_path / 'w'), 'distill')
  with pytest.raises(errors.InputError, match='No model checkpoint'):
    pipeline.run_mode(
        tiny_config(
            **{'distill.teacher_checkpoint': str(tmp_path / 'nowhere')}
        ),
        str(tmp_path / 'w2'),
        'distill',
    )


@pytest.mark.slow
def test_teacher_of_another_shape_names_the_parameter(
    trained_workdir, tmp_path
):
  teacher_workdir, _, _ = trained_workdir
  config = tiny_config(**{'distill.teacher_checkpoint': teacher_workdir})
  config.model.ch = 16
  with pytest.raises(
      errors.InputError,
      match=r'parameter \S+ has shape \(.*\) there and \(.*\) ' 'here',
  ):
    pipeline.run_mode(config, str(tmp_path / 'w'), 'distill')


@pytest.mark.slow
def test_workdir_of_another_config_is_refused_untouched(trained_workdir):
  workdir, _, _ = trained_workdir
  before = _snapshot(workdir)
  # The learning rate may change on resume (to rescue a diverged run); the
  # warmup may not.
  with pytest.raises(
      errors.InputError,
      match='holds a run of a different config: train.warmup_steps',
  ):
    pipeline.run_mode(tiny_config(**{'train.warmup_steps': 3}), workdir, 'all')
  assert _snapshot(workdir) == before


@pytest.mark.slow
def test_command_line_errors_are_one_line(trained_workdir):
  workdir, _, _ = trained_workdir
  before = _snapshot(workdir)
  result = run_python([
      '-m',
      'diffusion_distillation.main',
      f'--config={TEST_CONFIG}',
      f'--workdir={workdir}',
      '--mode=fly',
  ])
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      "error: Unknown --mode='fly'; choose one of train, distill, sample, eval,"
      ' all.'
  )
  assert 'Traceback' not in result.stderr
  assert _snapshot(workdir) == before


@pytest.mark.slow
def test_eval_mode_writes_every_figure(trained_workdir):
  workdir, _, _ = trained_workdir
  pipeline.run_mode(tiny_config(), workdir, 'eval')
  with open(os.path.join(workdir, 'eval', 'results.json')) as f:
    results = json.load(f)
  assert results['reference_network']['test_accuracy'] > 0.95
  assert results['real_vs_real_count'] == 20
  assert results['real_vs_real_fd'] > 0
  entries = {row['name']: row for row in results['entries']}
  assert set(entries) == {
      'teacher_ddim_1',
      'teacher_ddim_4',
      'teacher_ancestral_4',
      'student_1',
      'student_2',
  }
  for row in entries.values():
    assert row['fd'] > 0 and 0 <= row['class_accuracy'] <= 1
    assert 1 <= row['classifier_score'] <= 10
    assert row['fidelity_to_reference']['mse'] > 0
  assert entries['student_1']['distilled_from'] == 'student_2'
  assert entries['student_2']['distilled_from'] == 'teacher_ddim_4'
  for name in ('student_1', 'student_2'):
    assert entries[name]['fidelity_to_teacher']['psnr'] > 0
  assert entries['teacher_ddim_4']['fidelity_to_teacher'] is None
  assert (
      os.path.getsize(os.path.join(workdir, 'eval', 'fd_vs_steps.png')) > 1000
  )


@pytest.mark.slow
def test_quality_benchmark_smoke_reuses_a_trained_workdir(
    trained_workdir, tmp_path
):
  workdir, _, _ = trained_workdir
  result = run_python([
      '-m',
      'benchmarks.quality_vs_steps',
      '--smoke',
      f'--workdir={workdir}',
      f'--out={tmp_path}',
  ])
  assert result.returncode == 0, result.stderr[-4000:]
  with open(tmp_path / 'quality_vs_steps_smoke.json') as f:
    summary = json.load(f)
  assert summary['variant'] == 'smoke' and summary['git_commit']
  timings = summary['timings']
  assert timings['teacher_seconds'] > 0
  assert set(timings['distill_round_seconds']) == {'1', '2'}
  # The tiny run distils 4 -> 1: no 4-step student, so those targets are
  # reported as not measured rather than guessed.
  targets = summary['targets']
  assert targets['distilled_4_over_best_teacher_fd']['met'] is None
  assert targets['distilled_1_over_best_teacher_fd']['measured'] > 0
  assert len(summary['eval']['entries']) == 5
  for suffix in ('png', 'md'):
    assert (tmp_path / f'quality_vs_steps_smoke.{suffix}').stat().st_size > 0


@pytest.mark.slow
def test_a_round_killed_after_its_model_still_gets_its_grid(tmp_path):
  workdir = str(tmp_path / 'w')
  config = tiny_config(**{'train.substeps': 1, 'distill.substeps': 1})
  pipeline.run_mode(config, workdir, 'train')
  pipeline.run_mode(config, workdir, 'distill')
  samples = os.path.join(workdir, 'samples')
  for grid in ('grid_teacher_4.png', 'grid_2.png', 'grid_1.png'):
    os.remove(os.path.join(samples, grid))
  pipeline.run_mode(config, workdir, 'train')
  pipeline.run_mode(config, workdir, 'distill')
  for grid in ('grid_teacher_4.png', 'grid_2.png', 'grid_1.png'):
    assert os.path.getsize(os.path.join(samples, grid)) > 0
