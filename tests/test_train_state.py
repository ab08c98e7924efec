"""Optimizer pieces: warmup, the per-round linear decay, EMA, clipping."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_distillation import network as network_lib
from diffusion_distillation.training import train_state as train_state_lib
from diffusion_distillation.training import trainer as trainer_lib
from diffusion_distillation.utils import sharding
from tests.helpers import tiny_config


def test_warmup_then_constant():
  lr = train_state_lib.learning_rate_schedule(
      learning_rate=1.0, warmup_steps=10
  )
  np.testing.assert_allclose(
      [lr(0), lr(5), lr(10), lr(1000)], [0.0, 0.5, 1.0, 1.0], atol=1e-6
  )


def test_linear_decay_to_zero_over_a_round():
  lr = train_state_lib.learning_rate_schedule(
      learning_rate=2.0, warmup_steps=0, decay_steps=100
  )
  np.testing.assert_allclose(
      [lr(0), lr(50), lr(100), lr(150)], [2.0, 1.0, 0.0, 0.0], atol=1e-6
  )
  warm = train_state_lib.learning_rate_schedule(
      learning_rate=2.0, warmup_steps=10, decay_steps=110
  )
  np.testing.assert_allclose(
      [warm(5), warm(10), warm(60), warm(110)], [1.0, 2.0, 1.0, 0.0], atol=1e-6
  )


def test_ema_update_and_copy():
  params, ema = {'w': jnp.ones(3)}, {'w': jnp.zeros(3)}
  np.testing.assert_allclose(
      train_state_lib.ema_update(ema, params, 0.9)['w'], 0.1, atol=1e-7
  )
  assert train_state_lib.ema_update(ema, params, 0.0) is params


def _ema_over(sequence, *, decay, schedule, start):
  ema = {'w': start}
  for n, params in enumerate(sequence, start=1):
    ema = train_state_lib.ema_update(
        ema,
        {'w': params},
        train_state_lib.ema_decay_at(n, decay=decay, schedule=schedule),
    )
  return ema['w']


@pytest.mark.parametrize('schedule', ['warmup', 'debias'])
def test_warm_ema_holds_no_trace_of_the_initialisation(schedule):
  start, params = jnp.full(3, -5.0), jnp.arange(3.0)
  for num_updates in (1, 2, 50):
    np.testing.assert_array_equal(
        _ema_over(
            [params] * num_updates, decay=0.999, schedule=schedule, start=start
        ),
        params,
    )


def test_constant_ema_is_the_release_average():
  start, params = jnp.full(3, -5.0), jnp.arange(3.0)
  got = _ema_over([params] * 10, decay=0.9, schedule='constant', start=start)
  np.testing.assert_allclose(
      got, 0.9**10 * start + (1 - 0.9**10) * params, rtol=1e-5
  )


def test_debias_equals_a_zero_started_ema_divided_by_its_weight():
  decay, rng = 0.99, np.random.default_rng(0)
  sequence = rng.normal(size=(300, 4)).astype(np.float32)
  zero_started = np.zeros(4)
  for params in sequence:
    zero_started = decay * zero_started + (1 - decay) * params
  expected = zero_started / (1 - decay ** len(sequence))
  got = _ema_over(
      list(sequence), decay=decay, schedule='debias', start=jnp.full(4, 7.0)
  )
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_warmup_decay_grows_then_stops_at_the_configured_decay():
  decays = [
      float(train_state_lib.ema_decay_at(n, decay=0.99, schedule='warmup'))
      for n in (1, 2, 11, 91, 10_000)
  ]
  np.testing.assert_allclose(decays, [0.0, 1 / 11, 0.5, 0.9, 0.99], rtol=1e-6)


def test_unknown_ema_schedule_is_refused():
  with pytest.raises(ValueError, match='ema_schedule'):
    train_state_lib.ema_decay_at(1, decay=0.9, schedule='linear')


@pytest.mark.parametrize('schedule', ['warmup', 'constant'])
def test_train_step_ema_after_one_update(schedule):
  """Through the compiled step: with learning rate 0 the parameters stay
  put; an EMA that starts elsewhere (zeros, standing in for an earlier
  initialisation) equals them after one 'warmup' update, and moves by
  1 - ema_decay under the release's 'constant' schedule."""
  config = tiny_config(**{
      'train.learning_rate': 0.0,
      'train.ema_schedule': schedule,
      'train.substeps': 1,
  })
  mesh = sharding.make_mesh()
  trainer = trainer_lib.build(config, 'train', mesh)
  params = trainer.init_params(jax.random.key(0))
  state = trainer.fresh_state(params, num_sample_steps=0).replace(
      ema_params=jax.tree_util.tree_map(jnp.zeros_like, params)
  )
  images = np.zeros((1, 8, 8, 8, 1), np.float32)
  labels = np.zeros((1, 8), np.int32)
  state, _ = trainer.update(state, sharding.device_batch(images, labels, mesh))
  weight = 1.0 if schedule == 'warmup' else 1.0 - config.train.ema_decay
  for ema, param in zip(
      jax.tree_util.tree_leaves(state.ema_params),
      jax.tree_util.tree_leaves(params),
  ):
    np.testing.assert_allclose(
        ema, weight * np.asarray(param), rtol=1e-5, atol=1e-7
    )


def test_optimizer_clips_the_gradient_by_global_norm():
  config = tiny_config(**{
      'train.learning_rate': 1.0,
      'train.warmup_steps': 0,
      'train.weight_decay': 0.0,
  })
  optimizer = train_state_lib.make_optimizer(config, 'train')
  params = {'w': jnp.zeros(4)}
  huge = {'w': jnp.full(4, 1e6)}
  small = {'w': jnp.full(4, 1e-3)}
  # Adam's first update is lr * sign(g) whatever the scale; the clipped
  # gradient shows in the second moment instead: nu = (1 - b2) g^2.
  for grads, expected_g in ((huge, 0.5), (small, 1e-3)):  # |g| = 1 after clip
    _, state = optimizer.update(grads, optimizer.init(params), params)
    nu = state[1][0].nu['w']
    np.testing.assert_allclose(
        nu, (1 - config.adam.b2) * expected_g**2, rtol=1e-5
    )


def test_state_of_the_tiny_network_is_built_abstractly():
  config = tiny_config()
  network = network_lib.build_network(config, dropout=0.0)
  optimizer = train_state_lib.make_optimizer(config, 'train')
  abstract = train_state_lib.abstract_state(network, config, optimizer)
  assert (
      abstract.step.shape == () and abstract.num_sample_steps.dtype == jnp.int32
  )
  assert jax.tree_util.tree_structure(abstract.params) == (
      jax.tree_util.tree_structure(abstract.ema_params)
  )
