"""The accelerators' path on CPU: K substeps through lax.scan equal the same
K steps traced straight-line, for the teacher's and the student's step."""

import logging

import jax
import numpy as np
import pytest

from diffusion_distillation.data import datasets
from diffusion_distillation.training import trainer as trainer_lib
from diffusion_distillation.utils import sharding
from tests.helpers import assert_trees_close
from tests.helpers import tiny_config

_SUBSTEPS = 3


def _config():
  return tiny_config(**{
      'train.substeps': _SUBSTEPS,
      'distill.substeps': _SUBSTEPS,
      'distill.steps_per_round': 6,
  })


def _batch(config, phase, mesh, step=0):
  images, labels = datasets.batch_for_step(
      datasets.load('digits'),
      seed=0,
      step=step,
      batch_size=config[phase].batch_size,
      substeps=_SUBSTEPS,
  )
  return sharding.device_batch(images, labels, mesh)


def _run(phase, substep_loop, *, num_sample_steps=0):
  config, mesh = _config(), sharding.make_mesh()
  trainer = trainer_lib.build(config, phase, mesh, substep_loop=substep_loop)
  teacher = trainer.init_params(jax.random.key(0))
  state = trainer.fresh_state(teacher, num_sample_steps)
  state, metrics = trainer.update(
      state, _batch(config, phase, mesh), None if phase == 'train' else teacher
  )
  return jax.device_get((state, metrics))


@pytest.mark.slow
@pytest.mark.parametrize(
    'phase,num_sample_steps', [('train', 0), ('distill', 2)]
)
def test_scan_equals_straight_line(phase, num_sample_steps):
  scanned = _run(phase, 'scan', num_sample_steps=num_sample_steps)
  unrolled = _run(phase, 'unrolled', num_sample_steps=num_sample_steps)
  (state_s, metrics_s), (state_u, metrics_u) = scanned, unrolled
  assert int(state_s.step) == int(state_u.step) == _SUBSTEPS
  assert_trees_close(state_s.params, state_u.params, atol=1e-5)
  assert_trees_close(state_s.ema_params, state_u.ema_params, atol=1e-5)
  assert_trees_close(state_s.opt_state, state_u.opt_state, atol=1e-5)
  for key in ('loss', 'grad_norm'):
    np.testing.assert_allclose(metrics_s[key], metrics_u[key], rtol=1e-4)
  assert float(metrics_s['nonfinite']) == float(metrics_u['nonfinite']) == 0


@pytest.mark.slow
def test_scanned_distill_step_compiles_once_across_rounds():
  config, mesh = _config(), sharding.make_mesh()
  trainer = trainer_lib.build(config, 'distill', mesh, substep_loop='scan')
  records = []
  handler = logging.Handler()
  handler.emit = records.append
  jax_logger = logging.getLogger('jax')
  jax_logger.addHandler(handler)
  try:
    with jax.log_compiles(True):
      teacher = trainer.init_params(jax.random.key(0))
      for round_steps in (2, 1):  # two rounds, a new teacher each
        state = trainer.fresh_state(teacher, round_steps)
        for step in range(2):
          state, _ = trainer.update(
              state, _batch(config, 'distill', mesh, step), teacher
          )
        teacher = state.params
  finally:
    jax_logger.removeHandler(handler)
  compiled = [r.getMessage() for r in records]
  assert sum('Compiling jit(distill_step)' in m for m in compiled) == 1


def test_cpu_defaults_to_the_straight_line_loop():
  assert trainer_lib.default_substep_loop('cpu') == 'unrolled'
  assert trainer_lib.default_substep_loop('gpu') == 'scan'
  assert trainer_lib.default_substep_loop('tpu') == 'scan'


def test_an_unknown_substep_loop_is_refused():
  config, mesh = _config(), sharding.make_mesh()
  trainer = trainer_lib.build(config, 'train', mesh, substep_loop='while')
  state = trainer.fresh_state(trainer.init_params(jax.random.key(0)), 0)
  with pytest.raises(ValueError, match="Unknown substep_loop 'while'"):
    trainer.update(state, _batch(config, 'train', mesh))
