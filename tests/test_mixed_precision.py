"""bfloat16 mixed precision (model.dtype): the same parameters, an output
close to float32's, a train step that learns, sampling that works."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_distillation import network as network_lib
from diffusion_distillation import sampling
from diffusion_distillation.data import datasets
from diffusion_distillation.training import trainer as trainer_lib
from diffusion_distillation.utils import sharding
from tests.helpers import randomize_params
from tests.helpers import tiny_config

# bfloat16 keeps 8 significant bits: each rounding of an input or output
# errs by up to 2^-9 = 0.2 %. The tiny U-Net chains about 15 convolutions
# and dense layers; independent errors of that size add up to about
# sqrt(15) * 0.2 % ~ 1 %, and 3 % leaves room for correlated ones.
_RELATIVE_TOLERANCE = 3e-2


def _networks():
  config32 = tiny_config()
  config16 = tiny_config(**{'model.dtype': 'bfloat16'})
  return (
      config32,
      network_lib.build_network(config32, dropout=0.0),
      network_lib.build_network(config16, dropout=0.0),
  )


def test_the_parameter_tree_does_not_depend_on_the_dtype():
  config, net32, net16 = _networks()
  params32 = network_lib.abstract_params(net32, config)
  params16 = network_lib.abstract_params(net16, config)
  assert jax.tree_util.tree_structure(params32) == (
      jax.tree_util.tree_structure(params16)
  )
  for a, b in zip(
      jax.tree_util.tree_leaves(params32), jax.tree_util.tree_leaves(params16)
  ):
    assert a.shape == b.shape and a.dtype == b.dtype == jnp.float32


@pytest.mark.slow
def test_bfloat16_output_is_close_to_float32():
  config, net32, net16 = _networks()
  params = randomize_params(
      network_lib.init_params(net32, config, jax.random.key(0)),
      jax.random.key(1),
  )
  x = jax.random.normal(jax.random.key(2), (16, 8, 8, 1))
  logsnr = jnp.linspace(-10.0, 10.0, 16)
  y = jnp.arange(16) % 10
  out32 = net32.apply({'params': params}, x, logsnr, y)
  out16 = net16.apply({'params': params}, x, logsnr, y)
  assert out16.dtype == jnp.float32  # the diffusion math sees float32
  error = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32))
  assert 0 < error < _RELATIVE_TOLERANCE, error


def _training_losses(dtype, num_steps=24):
  config = tiny_config(**{
      'model.dtype': dtype,
      'train.substeps': 1,
      'train.learning_rate': 3e-3,
  })
  mesh = sharding.make_mesh()
  trainer = trainer_lib.build(config, 'train', mesh)
  state = trainer.fresh_state(trainer.init_params(jax.random.key(0)), 0)
  digits = datasets.load('digits')
  losses = []
  for step in range(num_steps):
    images, labels = datasets.batch_for_step(
        digits, seed=0, step=step, batch_size=8, substeps=1
    )
    state, metrics = trainer.update(
        state, sharding.device_batch(images, labels, mesh)
    )
    losses.append(float(metrics['loss']))
  return np.array(losses), state


@pytest.mark.slow
def test_a_bfloat16_train_step_lowers_the_loss_as_float32_does():
  losses16, state = _training_losses('bfloat16')
  losses32, _ = _training_losses('float32')
  assert np.all(np.isfinite(losses16))
  first, last = losses16[:6].mean(), losses16[-6:].mean()
  assert last < 0.85 * first, losses16
  # Same batches, times and noise: the curves differ by rounding only.
  np.testing.assert_allclose(last, losses32[-6:].mean(), rtol=0.1)
  for leaf in jax.tree_util.tree_leaves((state.params, state.ema_params)):
    assert leaf.dtype == jnp.float32


def test_sampling_in_bfloat16_follows_float32():
  config, net32, net16 = _networks()
  params = randomize_params(
      network_lib.init_params(net32, config, jax.random.key(0)),
      jax.random.key(1),
      scale=0.05,
  )
  labels = np.arange(8, dtype=np.int32)
  samples = {
      name: (
          sampling.Sampler(net, config, batch_size=8).sample(
              params, num_steps=4, num_samples=8, labels=labels, seed=3
          )
      )
      for name, net in (('32', net32), ('16', net16))
  }
  assert samples['16'].shape == (8, 8, 8, 1)
  assert np.all(np.isfinite(samples['16']))
  assert np.all(np.abs(samples['16']) <= 1.0)  # clipped x
  assert np.mean(np.abs(samples['16'] - samples['32'])) < 0.05
