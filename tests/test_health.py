"""training/health.py: a non-finite or blown-up state is never saved, the
last good checkpoint is named with the fix, and skipped updates are
bounded."""

import json
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from diffusion_distillation import pipeline
from diffusion_distillation.runs import workdir as workdir_lib
from diffusion_distillation.training import checkpoints
from diffusion_distillation.training import health
from diffusion_distillation.training import trainer as trainer_lib
from diffusion_distillation.utils import errors
from tests.helpers import SHORT_TEACHER
from tests.helpers import tiny_config


@pytest.mark.slow
def test_a_diverged_run_saves_no_nan_and_resumes_with_a_lower_rate(tmp_path):
  workdir = str(tmp_path / 'w')
  diverging = tiny_config(**SHORT_TEACHER, **{'train.learning_rate': 1e3})
  with pytest.raises(errors.RunStopped) as stopped:
    pipeline.run_mode(diverging, workdir, 'train')
  message = str(stopped.value)
  assert '\n' not in message
  assert 'train diverged' in message and 'was not saved' in message
  assert '--config.train.learning_rate=100' in message
  saved = checkpoints.manager(os.path.join(workdir, 'teacher'), max_to_keep=3)
  good_steps = sorted(saved.all_steps())
  saved.close()
  assert good_steps and f'teacher/{good_steps[-1]}' in message
  assert workdir_lib.saved_models(workdir) == []

  # The fix the message offers is accepted by the workdir, and recorded.
  pipeline.run_mode(
      tiny_config(**SHORT_TEACHER, **{'train.learning_rate': 1e-3}),
      workdir,
      'train',
  )
  assert workdir_lib.saved_models(workdir) == [0]
  with open(os.path.join(workdir, 'config_changes.json')) as f:
    changes = json.load(f)
  assert changes[-1]['changed'] == {
      'train.learning_rate': {'from': 1000.0, 'to': 0.001}
  }
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['train']['learning_rate'] == 0.001


@pytest.mark.slow
def test_skipping_non_finite_updates_is_logged_and_bounded(tmp_path, caplog):
  config = tiny_config(**{
      **SHORT_TEACHER,
      'train.num_steps': 24,
      'train.learning_rate': 1e3,
      'train.skip_nonfinite_updates': True,
  })
  with pytest.raises(errors.RunStopped, match='updates were non-finite and '):
    pipeline.run_mode(config, str(tmp_path / 'w'), 'train')
  assert any(
      'skipped' in r.getMessage() and r.levelname == 'WARNING'
      for r in caplog.records
  )
  assert workdir_lib.saved_models(str(tmp_path / 'w')) == []


class _State(NamedTuple):
  params: dict
  opt_state: dict


def _state(weight, moment=1.0):
  return _State(
      {'w': jnp.full((3,), weight, jnp.float32)},
      {'mu': jnp.full((3,), moment, jnp.float32)},
  )


def _guard(skip=False, last_good='w/teacher/4'):
  phase = ml_collections.ConfigDict({
      'learning_rate': 1e30,
      'substeps': 2,
      'max_skipped_fraction': 0.1,
      'skip_nonfinite_updates': skip,
  })
  return health.StateGuard('train', phase, _state(0.5).params, last_good)


def test_a_finite_state_whose_parameters_blew_up_is_refused():
  guard = _guard()
  guard.check(_state(400.0), 6)  # within GROWTH_LIMIT of max(0.5, 1)
  with pytest.raises(errors.RunStopped) as stopped:
    guard.check(_state(1.01e30), 8)
  message = str(stopped.value)
  assert 'train diverged: its largest parameter grew to 1.01e+30' in message
  assert 'the last good checkpoint is w/teacher/4' in message
  assert '--config.train.learning_rate=1e+29' in message
  assert 'skip_nonfinite_updates' not in message  # it cannot help a blow-up


def test_growth_is_judged_against_the_last_saved_state():
  guard = _guard()
  guard.check(_state(900.0), 6)
  guard.saved('w/teacher/6')
  guard.check(_state(9e5), 8)  # 1000x the saved state's 900, not the start's
  with pytest.raises(errors.RunStopped, match='w/teacher/6'):
    guard.check(_state(1e9), 10)


def test_skipping_is_offered_only_after_healthy_training_at_that_rate():
  with pytest.raises(errors.RunStopped) as at_once:
    _guard().check(_state(float('nan')), 2)
  assert 'skip_nonfinite_updates' not in str(at_once.value)
  guard = _guard()
  guard.check(_state(0.6), 2)
  with pytest.raises(errors.RunStopped) as later:
    guard.check(_state(0.7, moment=float('inf')), 4)
  assert 'state holds NaN or inf at step 4' in str(later.value)
  assert '--config.train.skip_nonfinite_updates=True' in str(later.value)


def test_too_many_skipped_updates_name_the_last_good_checkpoint():
  guard = _guard(skip=True)
  for _ in range(5):
    guard.dispatched({'nonfinite': jnp.int32(1)})
  with pytest.raises(errors.RunStopped) as stopped:
    guard.check(_state(0.5), 10)
  message = str(stopped.value)
  assert '5 of the last 10 updates were non-finite' in message
  assert 'The state at step 10 was not saved' in message
  assert 'the last good checkpoint is w/teacher/4' in message
  assert 'The state was not saved' not in message


# The scenario: a good checkpoint, then a rate that blows the
# parameters up to a finite ~1e30 in one update, with skipping on (the next
# update is NaN and skipped). Eight updates, one per dispatch, checkpoints
# every two, two kept: three saves after the blow-up would rotate the good
# one out.
_BLOW_UP = {
    'train.num_steps': 8,
    'train.substeps': 1,
    'checkpoint.every_steps': 2,
    'checkpoint.max_to_keep': 2,
    'log_every_steps': 100,
    'train.learning_rate': 1e30,
    'train.skip_nonfinite_updates': True,
}


def _teacher_steps(workdir):
  saved = checkpoints.manager(os.path.join(workdir, 'teacher'), max_to_keep=2)
  steps = sorted(saved.all_steps())
  saved.close()
  return steps


@pytest.mark.slow
def test_skipping_at_a_blowing_up_rate_keeps_the_last_good_checkpoint(
    tmp_path,
):
  workdir = str(tmp_path / 'w')
  config = tiny_config(**_BLOW_UP)
  # The good checkpoint: the initial state, saved as a run saves it.
  run = pipeline.Run(config, workdir)
  trainer = trainer_lib.build(config, 'train', run.mesh)
  state = trainer.fresh_state(
      trainer.init_params(jax.random.key(0)), num_sample_steps=0
  )
  saved = checkpoints.manager(os.path.join(workdir, 'teacher'), max_to_keep=2)
  checkpoints.save(saved, 0, state, {'phase': 'train'})
  saved.close()

  with pytest.raises(errors.RunStopped) as stopped:
    pipeline.run_mode(config, workdir, 'train')
  message = str(stopped.value)
  assert 'train diverged' in message, message
  assert f'last good checkpoint is {workdir}/teacher/0' in message
  assert 'skip_nonfinite_updates' not in message  # it cannot help here
  assert _teacher_steps(workdir) == [0]  # nothing saved after it
