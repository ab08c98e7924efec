"""The cosine log-SNR schedule: end points, monotonicity, inverse, precision."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_distillation import schedules
from diffusion_distillation import unet

INF = float('inf')


def _reference_logsnr(t, logsnr_min, logsnr_max):
  """The schedule's defining formula in float64 NumPy."""
  b = np.arctan(np.exp(-0.5 * logsnr_max))
  a = np.arctan(np.exp(-0.5 * logsnr_min)) - b
  return -2.0 * np.log(np.tan(a * np.asarray(t, np.float64) + b))


@pytest.mark.parametrize(
    'logsnr_min,logsnr_max', [(-20.0, 20.0), (-INF, 20.0), (-5.0, 8.0)]
)
def test_end_points_and_monotonic(logsnr_min, logsnr_max):
  fn = schedules.get_logsnr_schedule(
      'cosine', logsnr_min=logsnr_min, logsnr_max=logsnr_max
  )
  np.testing.assert_allclose(fn(jnp.float32(0.0)), logsnr_max, rtol=1e-5)
  if logsnr_min == -INF:
    assert fn(jnp.float32(1.0)) == -INF  # alpha_1 = 0 exactly
    assert float(jax.nn.sigmoid(fn(jnp.float32(1.0)))) == 0.0
  else:
    np.testing.assert_allclose(fn(jnp.float32(1.0)), logsnr_min, rtol=1e-5)
  values = np.asarray(fn(jnp.linspace(0.0, 1.0, 4097)))
  assert np.all(np.diff(values) < 0)


def test_matches_float64_formula_everywhere():
  t = np.linspace(0.0, 1.0, 10001)
  got = np.asarray(
      schedules.cosine_logsnr_schedule(
          jnp.asarray(t, jnp.float32), logsnr_min=-20.0, logsnr_max=20.0
      )
  )
  np.testing.assert_allclose(
      got, _reference_logsnr(t, -20.0, 20.0), atol=2e-4, rtol=1e-5
  )


@pytest.mark.parametrize('logsnr_min', [-20.0, -INF])
def test_inverse(logsnr_min):
  t = jnp.linspace(0.001, 0.999, 999)
  lam = schedules.cosine_logsnr_schedule(
      t, logsnr_min=logsnr_min, logsnr_max=20.0
  )
  inverse = schedules.get_logsnr_schedule_inverse(
      'cosine', logsnr_min=logsnr_min, logsnr_max=20.0
  )
  np.testing.assert_allclose(inverse(lam), t, atol=1e-5)


def test_inv_cos_input_is_inverse_of_unclipped_cosine():
  lam = jnp.linspace(-20.0, 20.0, 401)
  expected = schedules.cosine_logsnr_schedule_inverse(
      lam, logsnr_min=-INF, logsnr_max=INF
  )
  got = unet.logsnr_to_time(lam, logsnr_input_type='inv_cos')
  np.testing.assert_allclose(got, expected, atol=1e-6)
  # ... and it sends the ends of [-20, 20] to (almost) 1 and 0.
  assert math.isclose(float(got[0]), 1.0, abs_tol=1e-4)
  assert math.isclose(float(got[-1]), 0.0, abs_tol=1e-4)


def test_unknown_schedule_and_bad_end_points():
  with pytest.raises(ValueError, match="Unknown logsnr schedule 'linear'"):
    schedules.get_logsnr_schedule('linear', logsnr_min=-20, logsnr_max=20)
  with pytest.raises(ValueError, match='must be below'):
    schedules.get_logsnr_schedule('cosine', logsnr_min=20, logsnr_max=-20)
