"""Guided distillation end to end on the tiny guided config: teacher, stage
one, two rounds, samples, eval; one compilation per phase; stage one resumed
after SIGKILL equals an uninterrupted stage one; bad input."""

import json
import logging
import os
import shutil

import jax
import numpy as np
import pytest

from configs import test_guided
from diffusion_distillation import network as network_lib
from diffusion_distillation.guided import phases as guided_phases
from diffusion_distillation.guided import pipeline as guided_pipeline
from diffusion_distillation.guided import workdir as guided_workdir
from diffusion_distillation.runs import run_config
from diffusion_distillation.runs import workdir as workdir_lib
from diffusion_distillation.training import health
from diffusion_distillation.utils import errors
from tests.helpers import REPO
from tests.helpers import assert_trees_close
from tests.helpers import kill_main_when_saved
from tests.helpers import run_python
from tests.helpers import tiny_config
from tests.helpers import with_overrides
from tests.test_pipeline import run_logging_compiles

GUIDED_CONFIG = os.path.join(REPO, 'configs', 'test_guided.py')


def guided_config(**overrides):
  return with_overrides(test_guided.get_config(), **overrides)


def _params(path, config, *, student=True, num_sample_steps=0):
  """A saved model's parameters as NumPy: `path` a workdir or models/<N>."""
  network = network_lib.build_network(
      config, dropout=0.0, guidance_embedding=student
  )
  params, _ = workdir_lib.load_model(
      path,
      network_lib.abstract_params(network, config),
      num_sample_steps=num_sample_steps,
  )
  return jax.tree_util.tree_map(np.asarray, params)


@pytest.fixture(scope='module')
def guided_run(tmp_path_factory):
  """A finished tiny guided run (teacher, stage one, rounds 4 -> 2 -> 1,
  samples), with the compilations it logged."""
  workdir = str(tmp_path_factory.mktemp('guided') / 'workdir')
  timings, compiled = run_logging_compiles(
      guided_config(), workdir, 'all', guided_pipeline.run_mode
  )
  return workdir, compiled, timings


@pytest.mark.slow
def test_guided_run_writes_every_model_and_sample(guided_run):
  workdir, _, timings = guided_run
  assert set(timings) == {'train_teacher', 'guide', 'distill', 'sample'}
  assert workdir_lib.saved_models(workdir) == [0, 1, 2]
  assert guided_workdir.has_stage_one_model(workdir)
  config = guided_config()
  teacher = _params(workdir, config, student=False)
  stage_one = _params(os.path.join(workdir, 'models_guide', '0'), config)
  assert not network_lib.has_guidance_embedding(teacher)
  assert network_lib.has_guidance_embedding(stage_one)
  # Stage one moved the student away from its teacher.
  diffs = jax.tree_util.tree_map(
      lambda a, b: float(np.max(np.abs(a - b))),
      teacher,
      {name: stage_one[name] for name in teacher},
  )
  assert max(jax.tree_util.tree_leaves(diffs)) > 0
  for n in (1, 2):
    assert network_lib.has_guidance_embedding(
        _params(workdir, config, num_sample_steps=n)
    )
  samples = os.path.join(workdir, 'samples')
  for name in (
      'samples_4_teacher_w1',
      'samples_4_guide_w1',
      'samples_2_w1',
      'samples_1_w1',
  ):
    with np.load(os.path.join(samples, f'{name}.npz')) as f:
      assert f['arr_0'].shape == (8, 8, 8, 1) and f['arr_0'].dtype == np.uint8
      np.testing.assert_array_equal(f['arr_1'], np.arange(8) % 10)
  for grid in ('grid_teacher_4', 'grid_guide_4', 'grid_2', 'grid_1'):
    assert os.path.exists(os.path.join(samples, f'{grid}.png'))


@pytest.mark.slow
def test_one_compilation_per_phase(guided_run):
  _, compiled, _ = guided_run
  count = lambda name: sum(f'Compiling jit({name})' in m for m in compiled)
  assert count('train_step') == 1, compiled
  assert count('guide_step') == 1, compiled
  assert count('distill_step') == 1, compiled  # two rounds


@pytest.mark.slow
def test_stage_one_resumed_after_sigkill_matches_uninterrupted(
    guided_run, tmp_path
):
  teacher_workdir, _, _ = guided_run
  overrides = {'guide.num_steps': 12, 'checkpoint.every_steps': 2}
  config = guided_config(**overrides)

  def with_teacher(name):
    """A fresh workdir holding the finished teacher only."""
    workdir = tmp_path / name
    shutil.copytree(
        os.path.join(teacher_workdir, 'models', '0'),
        workdir / 'models' / '0',
    )
    return str(workdir)

  reference = with_teacher('reference')
  guided_pipeline.run_mode(config, reference, 'guide')

  resumed = with_teacher('resumed')
  # One CPU device, as the in-process reference.
  flags = [
      f'--config={GUIDED_CONFIG}',
      f'--workdir={resumed}',
      '--mode=guide',
      '--cpu_devices=1',
  ]
  flags += [f'--config.{k}={v}' for k, v in overrides.items()]
  # Killed as soon as the first stage-one checkpoint is on disk: five more
  # dispatches, each with a save, remain.
  kill_main_when_saved(
      flags, os.path.join(resumed, 'guide', '2'), what='stage one'
  )
  assert not guided_workdir.has_stage_one_model(
      resumed
  ), 'killed after stage one'

  result = run_python(['-m', 'diffusion_distillation.main'] + flags)
  assert result.returncode == 0, result.stderr[-3000:]
  stage_one = lambda workdir: _params(
      os.path.join(workdir, 'models_guide', '0'), config
  )
  assert_trees_close(stage_one(resumed), stage_one(reference))


@pytest.mark.slow
def test_a_diverged_stage_one_resumes_with_the_rate_its_message_offers(
    guided_run, tmp_path, monkeypatch, caplog
):
  teacher_workdir, _, _ = guided_run
  workdir = tmp_path / 'w'
  shutil.copytree(
      os.path.join(teacher_workdir, 'models', '0'), workdir / 'models' / '0'
  )
  short = {
      'guide.num_steps': 6,
      'guide.substeps': 1,
      'checkpoint.every_steps': 1,
  }
  # The state goes non-finite after step 2, whatever the numbers do.
  is_finite = health.is_finite
  monkeypatch.setattr(
      health,
      'is_finite',
      lambda state: int(state.step) <= 2 and is_finite(state),
  )
  with pytest.raises(errors.RunStopped) as stopped:
    guided_pipeline.run_mode(guided_config(**short), str(workdir), 'guide')
  message = str(stopped.value)
  assert 'guide diverged' in message and f'{workdir}/guide/2' in message
  assert '--config.guide.learning_rate=5e-05' in message
  assert not guided_workdir.has_stage_one_model(str(workdir))
  monkeypatch.undo()

  # The rerun the message offers is accepted, recorded and resumed.
  caplog.set_level(logging.INFO, logger='absl')
  guided_pipeline.run_mode(
      guided_config(**short, **{'guide.learning_rate': 5e-05}),
      str(workdir),
      'guide',
  )
  assert guided_workdir.has_stage_one_model(str(workdir))
  with open(workdir / 'config_changes.json') as f:
    changes = json.load(f)
  assert changes[-1]['changed'] == {
      'guide.learning_rate': {'from': 0.0005, 'to': 5e-05}
  }
  assert any(
      'Resuming stage one at step 2' in r.getMessage() for r in caplog.records
  )


@pytest.mark.slow
def test_guided_eval_scores_every_model_at_every_w(guided_run):
  workdir, _, _ = guided_run
  guided_pipeline.run_mode(guided_config(), workdir, 'eval')
  with open(os.path.join(workdir, 'eval', 'guided_results.json')) as f:
    results = json.load(f)
  names = {row['name'] for row in results['entries']}
  expected = set()
  for w in ('0', '2'):
    expected |= {f'teacher_ddim_1_w{w}', f'teacher_ddim_4_w{w}'}
    expected |= {f'guide_ddim_4_w{w}'}
    for n in (1, 2):
      expected |= {f'student_ddim_{n}_w{w}', f'student_stochastic_{n}_w{w}'}
  assert names == expected
  for row in results['entries']:
    assert row['fd'] > 0 and 0 <= row['class_accuracy'] <= 1
    assert 0.1 <= row['mean_confidence'] <= 1
    per_step = 2 if row['model'] == 'teacher' else 1
    assert row['network_evaluations'] == per_step * row['num_steps']
  for name in ('guided_results.md', 'guided_vs_w.png'):
    assert os.path.getsize(os.path.join(workdir, 'eval', name)) > 500


# ----------------------------------------------------------------------------
# Bad input.


def test_guide_mode_needs_a_guided_config(tmp_path):
  with pytest.raises(errors.InputError, match='needs a guided config'):
    guided_pipeline.run_mode(tiny_config(), str(tmp_path / 'w'), 'guide')
  assert not os.path.exists(tmp_path / 'w')


def test_stage_one_needs_the_teacher_and_stage_two_stage_one(tmp_path):
  with pytest.raises(errors.InputError, match='Missing guided teacher'):
    guided_pipeline.run_mode(guided_config(), str(tmp_path / 'a'), 'guide')
  with pytest.raises(errors.InputError, match='Missing stage-one model'):
    guided_pipeline.run_mode(guided_config(), str(tmp_path / 'b'), 'distill')
  # Refused before anything is written.
  assert not os.path.exists(tmp_path / 'a')
  assert not os.path.exists(tmp_path / 'b')


@pytest.mark.parametrize(
    'field', ['learning_rate', 'skip_nonfinite_updates', 'max_skipped_fraction']
)
@pytest.mark.parametrize('section', ['train', 'guide', 'distill'])
def test_every_phase_offers_the_same_recovery_fields(tmp_path, section, field):
  workdir = str(tmp_path / 'w')
  run_config.record(workdir, guided_config())
  changed = guided_config()
  before = changed[section][field]
  changed[section][field] = not before if isinstance(before, bool) else 0.05
  changes = run_config.check(workdir, changed, guided_phases.PHASES)
  assert changes == {f'{section}.{field}': (before, changed[section][field])}


@pytest.mark.parametrize(
    'overrides,message',
    [
        (
            {'guide.max_skipped_fraction': 1.5},
            r'guide.max_skipped_fraction=1.5',
        ),
        ({'guide.max_skipped_fraction': -0.1}, r'in \[0, 1\)'),
        ({'guide.batch_size': 0}, 'guide.batch_size=0: a batch needs'),
        ({'guide.substeps': 3}, 'not a multiple of substeps=3'),
    ],
)
def test_every_phase_check_covers_stage_one(tmp_path, overrides, message):
  workdir = str(tmp_path / 'w')
  with pytest.raises(errors.InputError, match=message):
    guided_pipeline.run_mode(guided_config(**overrides), workdir, 'train')
  assert not os.path.exists(workdir)


def test_guided_eval_of_a_tfds_config_points_to_the_fid_command(tmp_path):
  from configs import imagenet64_guided

  with pytest.raises(
      errors.InputError, match='diffusion_distillation.evaluation.fid'
  ):
    guided_pipeline.run_mode(
        imagenet64_guided.get_config(), str(tmp_path / 'w'), 'eval'
    )
  assert not os.path.exists(tmp_path / 'w')


def test_guidance_on_an_unguided_config_is_refused():
  from diffusion_distillation import sampling

  sampler = sampling.Sampler(
      network_lib.build_network(tiny_config(), dropout=0.0), tiny_config()
  )
  with pytest.raises(ValueError, match='needs a guided config'):
    sampler.sample({}, num_steps=1, num_samples=1, guidance=1.0)


@pytest.mark.slow
def test_guided_benchmark_smoke_reuses_a_trained_workdir(guided_run, tmp_path):
  workdir, _, _ = guided_run
  result = run_python([
      '-m',
      'benchmarks.guided_quality',
      '--smoke',
      f'--workdir={workdir}',
      f'--out={tmp_path}',
      '--timing_repeats=1',
  ])
  assert result.returncode == 0, result.stderr[-4000:]
  with open(tmp_path / 'guided_quality_smoke.json') as f:
    summary = json.load(f)
  assert summary['variant'] == 'smoke' and summary['git_commit']
  training = summary['training']
  assert training['teacher_seconds'] > 0 and training['stage_one_seconds'] > 0
  assert set(training['distill_round_seconds']) == {'1', '2'}
  # The tiny run has no 4-step student: those targets are not measured.
  targets = summary['targets']
  assert targets['student_4_over_best_teacher_fd_w1']['met'] is None
  assert targets['accuracy_rise_w2_over_w0']['measured'] is not None
  timing = summary['sampling_times']
  assert timing['samplers']['student_1']['network_evaluations_per_sample'] == 1
  assert timing['samplers']['guided_ddim_4'][
      'network_evaluations_per_sample'
  ] == (8)
  speedup = timing['speedups']['student_1_vs_guided_ddim_4']
  assert speedup['measured'] == pytest.approx(
      timing['samplers']['guided_ddim_4']['seconds']
      / timing['samplers']['student_1']['seconds']
  )
  for suffix in ('png', 'md'):
    assert (tmp_path / f'guided_quality_smoke.{suffix}').stat().st_size > 0
