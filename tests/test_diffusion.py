"""Exact properties of the diffusion math: conversions, losses, samplers, and
the distillation target's one-step property."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_distillation import diffusion
from diffusion_distillation import schedules
from diffusion_distillation import unet
from tests.helpers import float64
from tests.helpers import randomize_params

INF = float('inf')
LOGSNRS = np.linspace(-20.0, 20.0, 41)
SCHEDULE = schedules.get_logsnr_schedule(
    'cosine', logsnr_min=-20.0, logsnr_max=20.0
)


def _random_xz(rng, logsnr, shape=(41, 4, 4, 2)):
  """Clean x in [-1, 1], noise and z at the given per-example log-SNRs."""
  kx, ke = jax.random.split(rng)
  x = jax.random.uniform(kx, shape, minval=-1.0, maxval=1.0)
  eps = jax.random.normal(ke, shape)
  return x, eps, diffusion.diffuse(x=x, eps=eps, logsnr=logsnr)


# ----------------------------------------------------------------------------
# Conversions.


def test_x_eps_v_round_trips_in_float64():
  with float64():
    logsnr = jnp.asarray(LOGSNRS, jnp.float64)
    x, eps, z = _random_xz(jax.random.key(0), logsnr)
    x, eps, z = (a.astype(jnp.float64) for a in (x, eps, z))
    z = diffusion.diffuse(x=x, eps=eps, logsnr=logsnr)
    v = diffusion.v_from_x_eps(x=x, eps=eps, logsnr=logsnr)
    close = functools.partial(np.testing.assert_allclose, atol=1e-9)
    close(diffusion.x_from_eps(z=z, eps=eps, logsnr=logsnr), x, atol=1e-6)
    close(diffusion.eps_from_x(z=z, x=x, logsnr=logsnr), eps, atol=1e-6)
    close(diffusion.x_from_v(z=z, v=v, logsnr=logsnr), x)
    close(diffusion.eps_from_v(z=z, v=v, logsnr=logsnr), eps)
    # v is a rotation of (x, eps): norms are preserved pointwise.
    close(z**2 + v**2, x**2 + eps**2)


@pytest.mark.parametrize('mean_type', diffusion.MEAN_TYPES)
def test_predict_inverts_model_output_from_x(mean_type):
  logsnr = jnp.asarray(LOGSNRS[5:-5], jnp.float32)  # [-15, 15]: float32-safe
  x, _, z = _random_xz(jax.random.key(1), logsnr, shape=(31, 4, 4, 2))
  out = diffusion.model_output_from_x(
      z=z, x=x, logsnr=logsnr, mean_type=mean_type
  )
  assert out.shape[-1] == diffusion.output_channels(mean_type, 2)
  pred = diffusion.predict(
      out, z=z, logsnr=logsnr, mean_type=mean_type, clip_x=False
  )
  np.testing.assert_allclose(pred.x, x, atol=2e-3)
  # The three predictions are consistent with z = alpha x + sigma eps.
  np.testing.assert_allclose(
      diffusion.diffuse(x=pred.x, eps=pred.eps, logsnr=logsnr), z, atol=1e-4
  )
  np.testing.assert_allclose(
      pred.v,
      diffusion.v_from_x_eps(x=pred.x, eps=pred.eps, logsnr=logsnr),
      atol=1e-4,
  )


@pytest.mark.parametrize('mean_type', diffusion.MEAN_TYPES)
def test_clipping_recomputes_eps_and_v(mean_type):
  logsnr = jnp.full((8,), 1.0)
  z = 3.0 * jax.random.normal(jax.random.key(2), (8, 4, 4, 1))
  out = 3.0 * jax.random.normal(
      jax.random.key(3), (8, 4, 4, diffusion.output_channels(mean_type, 1))
  )
  pred = diffusion.predict(
      out, z=z, logsnr=logsnr, mean_type=mean_type, clip_x=True
  )
  assert float(jnp.max(jnp.abs(pred.x))) <= 1.0
  unclipped = diffusion.predict(
      out, z=z, logsnr=logsnr, mean_type=mean_type, clip_x=False
  )
  assert float(jnp.max(jnp.abs(unclipped.x))) > 1.0
  np.testing.assert_allclose(
      diffusion.diffuse(x=pred.x, eps=pred.eps, logsnr=logsnr), z, atol=1e-5
  )
  np.testing.assert_allclose(
      pred.v,
      diffusion.v_from_x_eps(x=pred.x, eps=pred.eps, logsnr=logsnr),
      atol=1e-5,
  )


@pytest.mark.parametrize('mean_type', ['x', 'v', 'both'])
def test_alpha_zero_is_finite_for_x_v_both(mean_type):
  logsnr = jnp.full((4,), -INF)
  x, eps, z = _random_xz(jax.random.key(4), logsnr, shape=(4, 4, 4, 1))
  np.testing.assert_array_equal(z, eps)  # alpha = 0, sigma = 1
  out = jax.random.normal(
      jax.random.key(5), (4, 4, 4, diffusion.output_channels(mean_type, 1))
  )
  pred = diffusion.predict(
      out, z=z, logsnr=logsnr, mean_type=mean_type, clip_x=False
  )
  assert all(bool(jnp.all(jnp.isfinite(a))) for a in pred)
  np.testing.assert_allclose(pred.eps, z)  # the noise is exactly z
  target = diffusion.Prediction(
      x=x, eps=eps, v=diffusion.v_from_x_eps(x=x, eps=eps, logsnr=logsnr)
  )
  for weighting in diffusion.LOSS_WEIGHTINGS:
    loss = diffusion.loss_from_predictions(pred, target, weighting=weighting)
    assert bool(jnp.all(jnp.isfinite(loss))), weighting


def test_eps_with_alpha_zero_is_refused():
  with pytest.raises(ValueError, match="mean_type='eps' cannot predict x"):
    diffusion.check_mean_type('eps', logsnr_min=-INF)
  diffusion.check_mean_type('eps', logsnr_min=-20.0)
  with pytest.raises(ValueError, match="Unknown mean_type 'y'"):
    diffusion.check_mean_type('y')


def test_log1mexp_values_and_gradient():
  x = jnp.asarray([1e-6, 1e-3, 0.5, 0.69, 0.7, 2.0, 30.0, 100.0])
  expected = np.log(-np.expm1(-np.asarray(x, np.float64)))
  np.testing.assert_allclose(
      diffusion.log1mexp(x), expected, rtol=5e-4, atol=1e-30
  )
  grads = jax.vmap(jax.grad(diffusion.log1mexp))(x)
  np.testing.assert_allclose(
      grads, 1.0 / np.expm1(np.asarray(x, np.float64)), rtol=1e-5, atol=1e-30
  )
  assert bool(jnp.all(jnp.isfinite(grads)))


# ----------------------------------------------------------------------------
# Losses and time sampling.


def test_loss_weightings_are_multiples_of_x_mse():
  logsnr = jnp.asarray(LOGSNRS[4:-4], jnp.float32)
  x, eps, z = _random_xz(jax.random.key(6), logsnr, shape=(33, 4, 4, 1))
  x_hat = x + 0.1 * jax.random.normal(jax.random.key(7), x.shape)
  pred = diffusion.prediction_from_x(z=z, x=x_hat, logsnr=logsnr)
  target = diffusion.Prediction(
      x=x, eps=eps, v=diffusion.v_from_x_eps(x=x, eps=eps, logsnr=logsnr)
  )
  x_mse = diffusion.meanflat((x_hat - x) ** 2)
  snr = jnp.exp(logsnr)
  loss = lambda w: diffusion.loss_from_predictions(pred, target, weighting=w)
  np.testing.assert_allclose(loss('constant'), x_mse, rtol=1e-6)
  np.testing.assert_allclose(loss('snr'), snr * x_mse, rtol=2e-3)
  np.testing.assert_allclose(
      loss('snr_trunc'), jnp.maximum(snr, 1.0) * x_mse, rtol=2e-3
  )
  np.testing.assert_allclose(loss('v_mse'), (1.0 + snr) * x_mse, rtol=2e-3)
  with pytest.raises(ValueError, match='Unknown mean_loss_weight_type'):
    loss('l1')


def test_sample_time_continuous_and_discrete():
  u, i = diffusion.sample_time(jax.random.key(0), 10000, num_steps=0)
  assert i is None and float(u.min()) >= 0.0 and float(u.max()) < 1.0
  u, i = diffusion.sample_time(jax.random.key(0), 10000, num_steps=4)
  np.testing.assert_array_equal(np.unique(np.asarray(i)), [0, 1, 2, 3])
  np.testing.assert_allclose(u, (i + 1) / 4)


# ----------------------------------------------------------------------------
# The distillation target.


def _gaussian_denoiser(mean, std):
  """E[x | z] for data x ~ N(mean, std^2) per pixel: the optimal denoiser."""

  def denoise(z, logsnr):
    alpha, sigma = diffusion.alpha_sigma(
        diffusion.broadcast_from_left(logsnr, z.shape)
    )
    gain = alpha * std**2 / (alpha**2 * std**2 + sigma**2)
    return mean + gain * (z - alpha * mean)

  return denoise


def _analytic_teacher(mean_type):
  x_fn = _gaussian_denoiser(0.3, 0.5)
  model_fn = lambda z, logsnr: diffusion.model_output_from_x(
      z=z, x=x_fn(z, logsnr), logsnr=logsnr, mean_type=mean_type
  )
  return model_fn


def _unet_teacher(mean_type, tiny_unet_kwargs):
  net = unet.UNet(
      out_ch=diffusion.output_channels(mean_type, 1), **tiny_unet_kwargs
  )
  x = jnp.zeros((2, 8, 8, 1))
  params = jax.jit(net.init)(jax.random.key(0), x, jnp.zeros((2,)))['params']
  params = randomize_params(params, jax.random.key(1))
  return jax.jit(lambda z, logsnr: net.apply({'params': params}, z, logsnr))


def _student_step_from_target(x_target, *, z, logsnr_t, logsnr_s, mean_type):
  """One student DDIM step when its network outputs exactly the target."""
  out = diffusion.model_output_from_x(
      z=z, x=x_target, logsnr=logsnr_t, mean_type=mean_type
  )
  pred = diffusion.predict(
      out, z=z, logsnr=logsnr_t, mean_type=mean_type, clip_x=False
  )
  return diffusion.ddim_step(pred, logsnr_s=logsnr_s)


@pytest.mark.parametrize('teacher_kind', ['analytic', 'unet'])
@pytest.mark.parametrize('mean_type', diffusion.MEAN_TYPES)
def test_one_student_step_lands_on_two_teacher_steps(
    mean_type, teacher_kind, tiny_unet_kwargs
):
  # In float64: 'eps' at lambda = -20 divides by alpha = 5e-5, which costs
  # float32 three digits and would hide a real error behind a loose tolerance.
  with float64():
    num_student_steps = 4
    if teacher_kind == 'analytic':
      model_fn = _analytic_teacher(mean_type)
    else:
      model_fn = _unet_teacher(mean_type, tiny_unet_kwargs)
    teacher_fn = diffusion.make_denoise_fn(
        model_fn, mean_type=mean_type, clip_x=False
    )
    step_index = jnp.asarray([0, 1, 2, 3, 1, 2, 3, 3])
    u = (step_index + 1).astype(jnp.float64) / num_student_steps
    logsnr_t = SCHEDULE(u)
    _, _, z = _random_xz(jax.random.key(8), logsnr_t, shape=(8, 8, 8, 1))
    z = z.astype(jnp.float64)

    x_target = diffusion.distillation_target(
        teacher_fn,
        z=z,
        u=u,
        step_index=step_index,
        num_student_steps=num_student_steps,
        logsnr_schedule=SCHEDULE,
    )

    # The teacher's two DDIM steps, computed independently: u -> u - 1/8 ->
    # u - 1/4.
    logsnr_mid = SCHEDULE(u - 1 / 8)
    logsnr_s = SCHEDULE(u - 1 / 4)
    pred_t = teacher_fn(z, logsnr_t)
    z_mid = diffusion.ddim_step(pred_t, logsnr_s=logsnr_mid)
    pred_mid = teacher_fn(z_mid, logsnr_mid)
    z_teacher = diffusion.ddim_step(pred_mid, logsnr_s=logsnr_s)

    z_student = _student_step_from_target(
        x_target, z=z, logsnr_t=logsnr_t, logsnr_s=logsnr_s, mean_type=mean_type
    )
    later = np.asarray(step_index) > 0
    np.testing.assert_allclose(
        np.asarray(z_student)[later], np.asarray(z_teacher)[later], atol=1e-9
    )
    # The student's step from i = 0 ends at t = 0: the target is x'.
    first = ~later
    np.testing.assert_array_equal(
        np.asarray(x_target)[first], np.asarray(pred_mid.x)[first]
    )
    # A non-trivial teacher: its target differs from its one-step x.
    assert float(jnp.max(jnp.abs(x_target - pred_t.x)[later])) > 1e-2


def test_one_step_property_holds_in_float32_away_from_alpha_zero():
  teacher_fn = diffusion.make_denoise_fn(
      _analytic_teacher('v'), mean_type='v', clip_x=False
  )
  step_index = jnp.asarray([1, 2, 3, 4, 5, 6])
  u = (step_index + 1).astype(jnp.float32) / 8
  _, _, z = _random_xz(jax.random.key(9), SCHEDULE(u), shape=(6, 4, 4, 1))
  x_target = diffusion.distillation_target(
      teacher_fn,
      z=z,
      u=u,
      step_index=step_index,
      num_student_steps=8,
      logsnr_schedule=SCHEDULE,
  )
  z_teacher = z
  for k in (1, 2):
    z_teacher = diffusion.ddim_step(
        teacher_fn(z_teacher, SCHEDULE(u - (k - 1) / 16)),
        logsnr_s=SCHEDULE(u - k / 16),
    )
  z_student = _student_step_from_target(
      x_target,
      z=z,
      logsnr_t=SCHEDULE(u),
      logsnr_s=SCHEDULE(u - 1 / 8),
      mean_type='v',
  )
  np.testing.assert_allclose(z_student, z_teacher, atol=1e-5)


def test_target_uses_midpoint_then_end():
  """u' = u - 1/(2N) is the midpoint (queried second); u'' = u - 1/N the end."""
  seen = []
  base = diffusion.make_denoise_fn(
      _analytic_teacher('x'), mean_type='x', clip_x=False
  )

  def recording_teacher(z, logsnr):
    seen.append(np.asarray(logsnr))
    return base(z, logsnr)

  u = jnp.asarray([0.75, 0.5])
  z = jax.random.normal(jax.random.key(0), (2, 2, 2, 1))
  x_target = diffusion.distillation_target(
      recording_teacher,
      z=z,
      u=u,
      step_index=jnp.asarray([2, 1]),
      num_student_steps=4,
      logsnr_schedule=SCHEDULE,
  )
  np.testing.assert_allclose(seen[0], SCHEDULE(u), rtol=1e-6)
  np.testing.assert_allclose(seen[1], SCHEDULE(u - 0.125), rtol=1e-6)
  assert len(seen) == 2
  # A DDIM step with x_target from u lands at u - 1/4, not u - 1/8: the
  # target is only consistent with the end point u''.
  z_mid = diffusion.ddim_step(
      base(z, SCHEDULE(u)), logsnr_s=SCHEDULE(u - 0.125)
  )
  z_end = diffusion.ddim_step(
      base(z_mid, SCHEDULE(u - 0.125)), logsnr_s=SCHEDULE(u - 0.25)
  )
  student = diffusion.prediction_from_x(z=z, x=x_target, logsnr=SCHEDULE(u))
  np.testing.assert_allclose(
      diffusion.ddim_step(student, logsnr_s=SCHEDULE(u - 0.25)),
      z_end,
      atol=1e-5,
  )


def test_distillation_loss_is_zero_for_a_student_equal_to_its_target():
  teacher_fn = diffusion.make_denoise_fn(
      _analytic_teacher('x'), mean_type='x', clip_x=False
  )
  inverse = schedules.get_logsnr_schedule_inverse(
      'cosine', logsnr_min=-20.0, logsnr_max=20.0
  )

  def ideal_student(z, logsnr):
    # Recover the student's time from its log-SNR, then output the target.
    u = inverse(logsnr)
    step_index = jnp.round(u * 4).astype(jnp.int32) - 1
    x_target = diffusion.distillation_target(
        teacher_fn,
        z=z,
        u=(step_index + 1) / 4,
        step_index=step_index,
        num_student_steps=4,
        logsnr_schedule=SCHEDULE,
    )
    return diffusion.prediction_from_x(z=z, x=x_target, logsnr=logsnr)

  x = jax.random.uniform(jax.random.key(0), (64, 4, 4, 1), minval=-1.0)
  loss = lambda student: diffusion.denoising_loss(
      student,
      x=x,
      rng=jax.random.key(1),
      logsnr_schedule=SCHEDULE,
      num_steps=4,
      weighting='constant',
      teacher_fn=teacher_fn,
  )
  assert float(jnp.max(loss(ideal_student))) < 1e-8
  # The teacher itself is not the two-step target.
  assert float(jnp.mean(loss(teacher_fn))) > 1e-3


# ----------------------------------------------------------------------------
# Samplers.


def _gaussian_sampler_moments(num_steps, logsnr_min=-20.0, mean=0.3, std=0.5):
  """Mean and std of DDIM samples when the data is N(mean, std^2).

  With the optimal denoiser every DDIM step is affine in z, so the whole
  sampler is z_1 -> a z_1 + b: its output for z_1 = 0 is the sample mean and
  its slope the sample std (no Monte Carlo error).
  """
  schedule = schedules.get_logsnr_schedule(
      'cosine', logsnr_min=logsnr_min, logsnr_max=20.0
  )
  x_fn = _gaussian_denoiser(mean, std)
  denoise = lambda z, logsnr: diffusion.prediction_from_x(
      z=z, x=x_fn(z, logsnr), logsnr=logsnr
  )
  with float64():
    out = diffusion.ddim_sample(
        denoise,
        z_init=jnp.asarray([0.0, 1.0], jnp.float64),
        num_steps=num_steps,
        logsnr_schedule=schedule,
    )
    return float(out[0]), float(out[1] - out[0])


@pytest.mark.parametrize('logsnr_min', [-20.0, -INF])
def test_ddim_oracle_reproduces_gaussian_data(logsnr_min):
  mean, std = _gaussian_sampler_moments(1024, logsnr_min)
  assert abs(mean - 0.3) < 1e-3 and abs(std - 0.5) < 1e-3
  errors = [
      abs(_gaussian_sampler_moments(n, logsnr_min)[1] - 0.5)
      for n in (1, 4, 16, 128)
  ]
  assert errors == sorted(errors, reverse=True) and errors[0] > 0.05, errors


def test_ancestral_oracle_reproduces_gaussian_data():
  x_fn = _gaussian_denoiser(0.3, 0.5)
  denoise = lambda z, logsnr: diffusion.prediction_from_x(
      z=z, x=x_fn(z, logsnr), logsnr=logsnr
  )
  z = jax.random.normal(jax.random.key(0), (40000,))
  for variance in ('fixed_large', 'fixed_small', 'fixed_medium:0.3'):
    x = diffusion.ancestral_sample(
        denoise,
        rng=jax.random.key(1),
        z_init=z,
        num_steps=256,
        logsnr_schedule=SCHEDULE,
        variance=variance,
    )
    assert abs(float(jnp.mean(x)) - 0.3) < 0.01, variance
    assert abs(float(jnp.std(x)) - 0.5) < 0.01, variance


def test_ancestral_step_with_perfect_x_and_no_noise_is_posterior_mean():
  with float64():
    logsnr_t = jnp.asarray([-20.0, -3.0, 0.0, 4.0], jnp.float64)
    logsnr_s = jnp.asarray([-15.0, 1.0, 0.5, 12.0], jnp.float64)
    x = jnp.asarray([0.3, -0.7, 1.0, 0.2], jnp.float64)
    z_t = jnp.asarray([1.1, -0.4, 0.2, 0.3], jnp.float64)
    a_t, s_t = diffusion.alpha_sigma(logsnr_t)
    a_s, s_s = diffusion.alpha_sigma(logsnr_s)
    # Textbook forms: z_t | z_s has scale a_ts and variance var_ts.
    a_ts = a_t / a_s
    var_ts = s_t**2 - a_ts**2 * s_s**2
    true_mean = a_ts * s_s**2 / s_t**2 * z_t + a_s * var_ts / s_t**2 * x
    true_var = var_ts * s_s**2 / s_t**2
    pred = diffusion.prediction_from_x(z=z_t, x=x, logsnr=logsnr_t)
    step = diffusion.ancestral_step(
        pred,
        z_t=z_t,
        logsnr_t=logsnr_t,
        logsnr_s=logsnr_s,
        noise=jnp.zeros_like(z_t),
        variance='fixed_small',
    )
    np.testing.assert_allclose(step, true_mean, rtol=1e-9, atol=1e-12)
    std = lambda v: diffusion.posterior(
        x=x, z_t=z_t, logsnr_t=logsnr_t, logsnr_s=logsnr_s, variance=v
    )[1]
    np.testing.assert_allclose(std('fixed_small') ** 2, true_var, rtol=1e-9)
    np.testing.assert_allclose(std('fixed_large') ** 2, var_ts, rtol=1e-9)
    np.testing.assert_allclose(
        std('fixed_medium:0.25') ** 2, var_ts**0.25 * true_var**0.75, rtol=1e-9
    )
    np.testing.assert_allclose(std('fixed_medium:0') ** 2, true_var, rtol=1e-9)
    np.testing.assert_allclose(std('fixed_medium:1') ** 2, var_ts, rtol=1e-9)
  for bad in ('fixed', 'fixed_medium:2', 'fixed_medium:x'):
    with pytest.raises(ValueError, match='Unknown logvar_type'):
      diffusion.check_variance(bad)


def test_samplers_compile_once_per_step_count():
  traces = []

  def model_fn(z, logsnr):
    traces.append(1)
    return 0.5 * z

  denoise = diffusion.make_denoise_fn(model_fn, mean_type='x', clip_x=True)

  @functools.partial(jax.jit, static_argnames='num_steps')
  def sample(z, num_steps):
    return diffusion.ddim_sample(
        denoise, z_init=z, num_steps=num_steps, logsnr_schedule=SCHEDULE
    )

  z = jnp.ones((2, 4))
  for num_steps in (4, 4, 8, 4, 8):
    sample(z, num_steps=num_steps)
  assert len(traces) == 2  # the loop body is traced once per step count
