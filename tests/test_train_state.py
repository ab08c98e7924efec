"""Optimizer pieces: warmup, the per-round linear decay, EMA, clipping."""

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_distillation import train_state as train_state_lib
from tests.conftest import tiny_config


def test_warmup_then_constant():
  lr = train_state_lib.learning_rate_schedule(learning_rate=1.0,
                                              warmup_steps=10)
  np.testing.assert_allclose([lr(0), lr(5), lr(10), lr(1000)],
                             [0.0, 0.5, 1.0, 1.0], atol=1e-6)


def test_linear_decay_to_zero_over_a_round():
  lr = train_state_lib.learning_rate_schedule(learning_rate=2.0,
                                              warmup_steps=0, decay_steps=100)
  np.testing.assert_allclose([lr(0), lr(50), lr(100), lr(150)],
                             [2.0, 1.0, 0.0, 0.0], atol=1e-6)
  warm = train_state_lib.learning_rate_schedule(learning_rate=2.0,
                                                warmup_steps=10,
                                                decay_steps=110)
  np.testing.assert_allclose([warm(5), warm(10), warm(60), warm(110)],
                             [1.0, 2.0, 1.0, 0.0], atol=1e-6)


def test_ema_update_and_copy():
  params, ema = {'w': jnp.ones(3)}, {'w': jnp.zeros(3)}
  np.testing.assert_allclose(
      train_state_lib.ema_update(ema, params, 0.9)['w'], 0.1, atol=1e-7)
  assert train_state_lib.ema_update(ema, params, 0.0) is params


def test_optimizer_clips_the_gradient_by_global_norm():
  config = tiny_config(**{'train.learning_rate': 1.0,
                          'train.warmup_steps': 0, 'train.weight_decay': 0.0})
  optimizer = train_state_lib.make_optimizer(config, 'train')
  params = {'w': jnp.zeros(4)}
  huge = {'w': jnp.full(4, 1e6)}
  small = {'w': jnp.full(4, 1e-3)}
  # Adam's first update is lr * sign(g) whatever the scale; the clipped
  # gradient shows in the second moment instead: nu = (1 - b2) g^2.
  for grads, expected_g in ((huge, 0.5), (small, 1e-3)):  # |g| = 1 after clip
    _, state = optimizer.update(grads, optimizer.init(params), params)
    nu = state[1][0].nu['w']
    np.testing.assert_allclose(nu, (1 - config.adam.b2) * expected_g**2,
                               rtol=1e-5)


def test_state_of_the_tiny_network_is_built_abstractly():
  config = tiny_config()
  network = train_state_lib.build_network(config, dropout=0.0)
  optimizer = train_state_lib.make_optimizer(config, 'train')
  abstract = train_state_lib.abstract_state(network, config, optimizer)
  assert abstract.step.shape == () and abstract.num_sample_steps.dtype == jnp.int32
  assert jax.tree_util.tree_structure(abstract.params) == (
      jax.tree_util.tree_structure(abstract.ema_params))
