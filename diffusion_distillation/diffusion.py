"""Diffusion math of progressive distillation, independent of any network.

Everything is written in log-SNR: lambda = log(alpha^2 / sigma^2), with
alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda) and
z = alpha x + sigma eps (variance preserving). Networks enter only as callables:

  model_fn(z, logsnr) -> raw network output      (what the U-Net returns)
  denoise_fn(z, logsnr) -> Prediction(x, eps, v)  (see `make_denoise_fn`)

Shapes: z, x, eps, v are [B, ...]; logsnr is [B] (or a scalar) and is
broadcast from the left.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from diffusion_distillation import schedules

MEAN_TYPES = ('eps', 'x', 'v', 'both')
LOSS_WEIGHTINGS = ('constant', 'snr', 'snr_trunc', 'v_mse')


class Prediction(NamedTuple):
  """A denoising prediction in all three parameterisations."""

  x: jnp.ndarray
  eps: jnp.ndarray
  v: jnp.ndarray


ModelFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]
DenoiseFn = Callable[[jnp.ndarray, jnp.ndarray], Prediction]


# ----------------------------------------------------------------------------
# Small numerically careful helpers.


def broadcast_from_left(x, shape):
  """Adds trailing axes to `x` so that it broadcasts against `shape`."""
  x = jnp.asarray(x)
  return jnp.reshape(x, x.shape + (1,) * (len(shape) - x.ndim))


def alpha_sigma(logsnr):
  """(alpha, sigma) for log-SNR `logsnr`; exact at +-inf."""
  return jnp.sqrt(jax.nn.sigmoid(logsnr)), jnp.sqrt(jax.nn.sigmoid(-logsnr))


@jax.custom_jvp
def log1mexp(x):
  """log(1 - exp(-x)) for x > 0, accurate for both small and large x."""
  x = jnp.asarray(x)
  # Evaluate each branch only where it is accurate, and keep the other
  # branch's argument harmless so that neither produces inf/nan gradients.
  small = x < jnp.log(2.0)
  x_small = jnp.where(small, x, 1.0)
  x_large = jnp.where(small, 1.0, x)
  return jnp.where(
      small, jnp.log(-jnp.expm1(-x_small)), jnp.log1p(-jnp.exp(-x_large))
  )


@log1mexp.defjvp
def _log1mexp_jvp(primals, tangents):
  (x,), (x_dot,) = primals, tangents
  # d/dx log(1 - e^-x) = 1 / expm1(x), finite for every x > 0.
  return log1mexp(x), x_dot / jnp.expm1(x)


def meanflat(x):
  """Mean over all axes but the first: [B, ...] -> [B]."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


# ----------------------------------------------------------------------------
# The forward process and conversions between x, eps and v.


def diffuse(*, x, eps, logsnr):
  """A sample of q(z | x) = N(alpha x, sigma^2 I) given its noise `eps`."""
  alpha, sigma = alpha_sigma(broadcast_from_left(logsnr, x.shape))
  return alpha * x + sigma * eps


def x_from_eps(*, z, eps, logsnr):
  """x = (z - sigma eps) / alpha; undefined where alpha = 0."""
  logsnr = broadcast_from_left(logsnr, z.shape)
  return jnp.sqrt(1.0 + jnp.exp(-logsnr)) * (
      z - eps * jax.lax.rsqrt(1.0 + jnp.exp(logsnr))
  )


def eps_from_x(*, z, x, logsnr):
  """eps = (z - alpha x) / sigma; finite at alpha = 0 (lambda = -inf)."""
  logsnr = broadcast_from_left(logsnr, z.shape)
  return jnp.sqrt(1.0 + jnp.exp(logsnr)) * (
      z - x * jax.lax.rsqrt(1.0 + jnp.exp(-logsnr))
  )


def v_from_x_eps(*, x, eps, logsnr):
  """v = alpha eps - sigma x."""
  alpha, sigma = alpha_sigma(broadcast_from_left(logsnr, x.shape))
  return alpha * eps - sigma * x


def x_from_v(*, z, v, logsnr):
  """x = alpha z - sigma v."""
  alpha, sigma = alpha_sigma(broadcast_from_left(logsnr, z.shape))
  return alpha * z - sigma * v


def eps_from_v(*, z, v, logsnr):
  """eps = sigma z + alpha v."""
  alpha, sigma = alpha_sigma(broadcast_from_left(logsnr, z.shape))
  return sigma * z + alpha * v


def prediction_from_x(*, z, x, logsnr) -> Prediction:
  """Completes an x prediction with the eps and v it implies at (z, logsnr)."""
  eps = eps_from_x(z=z, x=x, logsnr=logsnr)
  return Prediction(x=x, eps=eps, v=v_from_x_eps(x=x, eps=eps, logsnr=logsnr))


# ----------------------------------------------------------------------------
# Network output -> prediction.


def check_mean_type(mean_type: str, *, logsnr_min: float = -20.0):
  """Raises a one-line error for an unknown or ill-posed `mean_type`."""
  if mean_type not in MEAN_TYPES:
    raise ValueError(
        f'Unknown mean_type {mean_type!r}; choose one of {MEAN_TYPES}.'
    )
  if mean_type == 'eps' and logsnr_min == -float('inf'):
    raise ValueError(
        "mean_type='eps' cannot predict x where alpha = 0 (logsnr_min = -inf);"
        " use a finite logsnr_min such as -20, or mean_type 'x', 'v' or 'both'."
    )


def output_channels(mean_type: str, data_channels: int) -> int:
  """Channels the network must output for `mean_type`."""
  check_mean_type(mean_type)
  return 2 * data_channels if mean_type == 'both' else data_channels


def predict(
    model_output, *, z, logsnr, mean_type: str, clip_x: bool
) -> Prediction:
  """Turns a raw network output into (x, eps, v) predictions.

  Args:
    model_output: [B, H, W, C] (or [B, H, W, 2C] for 'both') network output.
    z: [B, H, W, C] noisy input the network saw.
    logsnr: [B] log-SNR of z.
    mean_type: 'eps' | 'x' | 'v' | 'both'.
    clip_x: clip x to [-1, 1] and recompute eps and v from it (sampling only).

  Returns:
    The Prediction.
  """
  check_mean_type(mean_type)
  bcast_logsnr = broadcast_from_left(logsnr, z.shape)
  alpha, sigma = alpha_sigma(bcast_logsnr)
  eps = v = None
  if mean_type == 'eps':
    eps = model_output
    x = x_from_eps(z=z, eps=eps, logsnr=logsnr)
  elif mean_type == 'x':
    x = model_output
  elif mean_type == 'v':
    v = model_output
    x = x_from_v(z=z, v=v, logsnr=logsnr)
    eps = eps_from_v(z=z, v=v, logsnr=logsnr)
  else:  # 'both'
    x_direct, eps_direct = jnp.split(model_output, 2, axis=-1)
    # x = sigma^2 x_direct + (1 - sigma^2) x(eps), where (1 - sigma^2) x(eps)
    # = alpha^2 (z - sigma eps) / alpha = alpha (z - sigma eps). This form
    # stays finite at alpha = 0, where x(eps) itself is undefined.
    x = sigma**2 * x_direct + alpha * (z - sigma * eps_direct)
  if clip_x:
    x = jnp.clip(x, -1.0, 1.0)
    eps = v = None
  if eps is None:
    eps = eps_from_x(z=z, x=x, logsnr=logsnr)
  if v is None:
    v = v_from_x_eps(x=x, eps=eps, logsnr=logsnr)
  return Prediction(x=x, eps=eps, v=v)


def make_denoise_fn(
    model_fn: ModelFn, *, mean_type: str, clip_x: bool
) -> DenoiseFn:
  """Wraps a network `model_fn(z, logsnr)` into a `denoise_fn`."""
  check_mean_type(mean_type)

  def denoise_fn(z, logsnr):
    return predict(
        model_fn(z, logsnr),
        z=z,
        logsnr=logsnr,
        mean_type=mean_type,
        clip_x=clip_x,
    )

  return denoise_fn


def model_output_from_x(*, z, x, logsnr, mean_type: str):
  """The network output that `predict` maps back to the x prediction `x`.

  Useful to drive the math with an analytic denoiser (tests, oracles).
  """
  pred = prediction_from_x(z=z, x=x, logsnr=logsnr)
  check_mean_type(mean_type)
  return {
      'x': pred.x,
      'eps': pred.eps,
      'v': pred.v,
      'both': jnp.concatenate([pred.x, pred.eps], axis=-1),
  }[mean_type]


# ----------------------------------------------------------------------------
# Training: time sampling, targets, losses.


def check_loss_weighting(weighting: str):
  if weighting not in LOSS_WEIGHTINGS:
    raise ValueError(
        f'Unknown mean_loss_weight_type {weighting!r}; '
        f'choose one of {LOSS_WEIGHTINGS}.'
    )


def loss_from_predictions(
    pred: Prediction, target: Prediction, *, weighting: str
):
  """Per-example weighted denoising loss, [B].

  'constant': |x - x_hat|^2; 'snr': |eps - eps_hat|^2 = SNR |x - x_hat|^2;
  'snr_trunc': max of the two = max(SNR, 1) |x - x_hat|^2;
  'v_mse': |v - v_hat|^2 = (1 + SNR) |x - x_hat|^2.
  """
  check_loss_weighting(weighting)
  x_mse = meanflat(jnp.square(pred.x - target.x))
  eps_mse = meanflat(jnp.square(pred.eps - target.eps))
  if weighting == 'constant':
    return x_mse
  if weighting == 'snr':
    return eps_mse
  if weighting == 'snr_trunc':
    return jnp.maximum(x_mse, eps_mse)
  return meanflat(jnp.square(pred.v - target.v))


def sample_time(rng, batch_size: int, *, num_steps: int):
  """Samples training times u in (0, 1] (continuous) or on a grid.

  Args:
    rng: PRNG key.
    batch_size: B.
    num_steps: the Python int 0 for continuous time, u ~ U[0, 1); N >= 1
      (an int or a traced int32 scalar) for discrete time with N sampling
      steps, i ~ randint[0, N), u = (i + 1) / N.

  Returns:
    (u [B] float32, step_index [B] int32): step_index is i in discrete time
    and None in continuous time.
  """
  if isinstance(num_steps, int):
    if num_steps == 0:
      return jax.random.uniform(rng, (batch_size,), jnp.float32), None
    if num_steps < 0:
      raise ValueError(f'num_steps must be >= 0, got {num_steps}.')
  i = jax.random.randint(rng, (batch_size,), 0, num_steps)
  return (i + 1).astype(jnp.float32) / jnp.asarray(num_steps, jnp.float32), i


def ddim_step(pred: Prediction, *, logsnr_s):
  """The deterministic DDIM update z_s = alpha_s x_hat + sigma_s eps_hat."""
  alpha_s, sigma_s = alpha_sigma(broadcast_from_left(logsnr_s, pred.x.shape))
  return alpha_s * pred.x + sigma_s * pred.eps


def distillation_target(
    teacher_fn: DenoiseFn,
    *,
    z,
    u,
    step_index,
    num_student_steps,
    logsnr_schedule: schedules.LogSNRSchedule,
):
  """The x target for a student of `num_student_steps` (paper Algorithm 2).

  Two teacher DDIM steps go from z at u to u' = u - 1/(2N) (the midpoint) and
  then to u'' = u - 1/N. The target x~ is the x that takes z to the teacher's
  z'' in ONE student DDIM step; for the last step (i = 0, ending at t = 0)
  it is the teacher's second x prediction itself.

  Args:
    teacher_fn: denoise_fn of the teacher (no clipping, no dropout).
    z: [B, ...] noisy input at time u.
    u: [B] times, u = (i + 1) / N.
    step_index: [B] int, i.
    num_student_steps: N, an int or a traced int32 scalar.
    logsnr_schedule: t -> lambda.

  Returns:
    x~ [B, ...], under stop_gradient.
  """
  bcast = lambda a: broadcast_from_left(a, z.shape)
  logsnr_t = logsnr_schedule(u)
  step_size = 1.0 / jnp.asarray(num_student_steps, u.dtype)
  logsnr_mid = logsnr_schedule(u - 0.5 * step_size)
  logsnr_s = logsnr_schedule(u - step_size)

  z_mid = ddim_step(teacher_fn(z, logsnr_t), logsnr_s=logsnr_mid)
  pred_mid = teacher_fn(z_mid, logsnr_mid)
  z_s = ddim_step(pred_mid, logsnr_s=logsnr_s)

  alpha_t, _ = alpha_sigma(bcast(logsnr_t))
  alpha_s, _ = alpha_sigma(bcast(logsnr_s))
  # sigma_s / sigma_t in a form that does not cancel when both are small.
  sigma_ratio = jnp.exp(
      0.5
      * (jax.nn.softplus(bcast(logsnr_t)) - jax.nn.softplus(bcast(logsnr_s)))
  )
  x_target = (z_s - sigma_ratio * z) / (alpha_s - sigma_ratio * alpha_t)
  x_target = jnp.where(bcast(step_index == 0), pred_mid.x, x_target)
  return jax.lax.stop_gradient(x_target)


def denoising_loss(
    denoise_fn: DenoiseFn,
    *,
    x,
    rng,
    logsnr_schedule: schedules.LogSNRSchedule,
    num_steps: int,
    weighting: str,
    teacher_fn: DenoiseFn | None = None,
):
  """Per-example training loss [B] of a denoiser on clean data x.

  Without a teacher this is the teacher's training loss (targets are the true
  x and eps). With `teacher_fn` it is the distillation loss for a student of
  `num_steps` steps (targets from `distillation_target`), or with
  num_steps=0 a continuous-time student's loss against the teacher's own
  x prediction at the same z (stage one of guided distillation, where the
  teacher is the guided combination).
  """
  rng_time, rng_noise = jax.random.split(rng)
  u, step_index = sample_time(rng_time, x.shape[0], num_steps=num_steps)
  logsnr = logsnr_schedule(u)
  eps = jax.random.normal(rng_noise, x.shape, x.dtype)
  z = diffuse(x=x, eps=eps, logsnr=logsnr)
  if teacher_fn is None:
    target = Prediction(
        x=x, eps=eps, v=v_from_x_eps(x=x, eps=eps, logsnr=logsnr)
    )
  elif isinstance(num_steps, int) and num_steps == 0:
    x_target = jax.lax.stop_gradient(teacher_fn(z, logsnr).x)
    target = prediction_from_x(z=z, x=x_target, logsnr=logsnr)
  else:
    x_target = distillation_target(
        teacher_fn,
        z=z,
        u=u,
        step_index=step_index,
        num_student_steps=num_steps,
        logsnr_schedule=logsnr_schedule,
    )
    target = prediction_from_x(z=z, x=x_target, logsnr=logsnr)
  return loss_from_predictions(
      denoise_fn(z, logsnr), target, weighting=weighting
  )


# ----------------------------------------------------------------------------
# Samplers.


def posterior(*, x, z_t, logsnr_t, logsnr_s, variance: str):
  """Mean and std of q(z_s | z_t, x) for s < t (logsnr_s > logsnr_t).

  With r = SNR_t / SNR_s: mean = r (alpha_s / alpha_t) z_t + (1 - r) alpha_s x;
  variance 'fixed_large' = (1 - r) sigma_t^2, 'fixed_small' = (1 - r)
  sigma_s^2, 'fixed_medium:f' = large^f small^(1 - f) (log-space mix).
  """
  logsnr_t = broadcast_from_left(logsnr_t, z_t.shape)
  logsnr_s = broadcast_from_left(logsnr_s, z_t.shape)
  alpha_t, sigma_t = alpha_sigma(logsnr_t)
  alpha_s, sigma_s = alpha_sigma(logsnr_s)
  one_minus_r = -jnp.expm1(logsnr_t - logsnr_s)
  # r alpha_s / alpha_t = alpha_t sigma_s^2 / (sigma_t^2 alpha_s): finite and
  # exactly 0 at alpha_t = 0, where the naive product is inf * 0.
  mean = (alpha_t * sigma_s**2 / (sigma_t**2 * alpha_s)) * z_t + (
      one_minus_r * alpha_s * x
  )
  log_one_minus_r = log1mexp(logsnr_s - logsnr_t)
  logvar_small = log_one_minus_r + jax.nn.log_sigmoid(-logsnr_s)
  logvar_large = log_one_minus_r + jax.nn.log_sigmoid(-logsnr_t)
  if variance == 'fixed_large':
    logvar = logvar_large
  elif variance == 'fixed_small':
    logvar = logvar_small
  elif variance.startswith('fixed_medium:'):
    frac = _medium_fraction(variance)
    logvar = frac * logvar_large + (1.0 - frac) * logvar_small
  else:
    raise ValueError(_variance_error(variance))
  return mean, jnp.exp(0.5 * logvar)


def _medium_fraction(variance):
  try:
    frac = float(variance.split(':', 1)[1])
  except ValueError:
    frac = -1.0
  if not 0.0 <= frac <= 1.0:
    raise ValueError(_variance_error(variance))
  return frac


def _variance_error(variance):
  return (
      f"Unknown logvar_type {variance!r}; choose 'fixed_large', "
      "'fixed_small' or 'fixed_medium:f' with 0 <= f <= 1."
  )


def check_variance(variance: str):
  if variance in ('fixed_large', 'fixed_small'):
    return
  if not variance.startswith('fixed_medium:'):
    raise ValueError(_variance_error(variance))
  _medium_fraction(variance)


def _step_logsnrs(i, num_steps, logsnr_schedule, batch_size):
  """lambda_t = lambda((i+1)/N), lambda_s = lambda(i/N), each as [B]."""
  t = (i + 1).astype(jnp.float32) / num_steps
  s = i.astype(jnp.float32) / num_steps
  full = lambda a: jnp.full((batch_size,), a, jnp.float32)
  return full(logsnr_schedule(t)), full(logsnr_schedule(s))


def ddim_sample(
    denoise_fn: DenoiseFn,
    *,
    z_init,
    num_steps: int,
    logsnr_schedule: schedules.LogSNRSchedule,
):
  """Deterministic DDIM sampling in `num_steps` (static) steps.

  Args:
    denoise_fn: (z, logsnr) -> Prediction, usually with clip_x=True.
    z_init: [B, ...] starting noise, N(0, I) (not scaled).
    num_steps: N, a static Python int.
    logsnr_schedule: t -> lambda.

  Returns:
    x [B, ...]: the last step returns the x prediction itself.
  """

  def body(k, z_t):
    i = num_steps - 1 - k
    logsnr_t, logsnr_s = _step_logsnrs(
        i, num_steps, logsnr_schedule, z_t.shape[0]
    )
    pred = denoise_fn(z_t, logsnr_t)
    return jnp.where(i == 0, pred.x, ddim_step(pred, logsnr_s=logsnr_s))

  return jax.lax.fori_loop(0, num_steps, body, z_init)


def ancestral_step(
    pred: Prediction, *, z_t, logsnr_t, logsnr_s, noise, variance: str
):
  """One ancestral step: a draw from q(z_s | z_t, x = pred.x) given `noise`."""
  mean, std = posterior(
      x=pred.x, z_t=z_t, logsnr_t=logsnr_t, logsnr_s=logsnr_s, variance=variance
  )
  return mean + std * noise


def ancestral_sample(
    denoise_fn: DenoiseFn,
    *,
    rng,
    z_init,
    num_steps: int,
    logsnr_schedule: schedules.LogSNRSchedule,
    variance: str = 'fixed_large',
):
  """Ancestral ("noisy") sampling from the posterior q(z_s | z_t, x_hat).

  Fresh noise per step comes from fold_in(rng, i); the last step returns the
  x prediction itself.
  """
  check_variance(variance)

  def body(k, z_t):
    i = num_steps - 1 - k
    logsnr_t, logsnr_s = _step_logsnrs(
        i, num_steps, logsnr_schedule, z_t.shape[0]
    )
    pred = denoise_fn(z_t, logsnr_t)
    noise = jax.random.normal(jax.random.fold_in(rng, i), z_t.shape, z_t.dtype)
    z_s = ancestral_step(
        pred,
        z_t=z_t,
        logsnr_t=logsnr_t,
        logsnr_s=logsnr_s,
        noise=noise,
        variance=variance,
    )
    return jnp.where(i == 0, pred.x, z_s)

  return jax.lax.fori_loop(0, num_steps, body, z_init)


def renoise(z_s, *, logsnr_s, logsnr_t, noise):
  """A draw from the forward process q(z_t | z_s) for t > s (logsnr_t <
  logsnr_s): (alpha_t / alpha_s) z_s + sigma_{t|s} noise, with
  sigma_{t|s}^2 = sigma_t^2 - (alpha_t / alpha_s)^2 sigma_s^2
  = sigma_t^2 (1 - SNR_t / SNR_s)."""
  logsnr_s = broadcast_from_left(logsnr_s, z_s.shape)
  logsnr_t = broadcast_from_left(logsnr_t, z_s.shape)
  alpha_s, _ = alpha_sigma(logsnr_s)
  alpha_t, sigma_t = alpha_sigma(logsnr_t)
  std = sigma_t * jnp.sqrt(-jnp.expm1(logsnr_t - logsnr_s))
  return (alpha_t / alpha_s) * z_s + std * noise


def stochastic_sample(
    denoise_fn: DenoiseFn,
    *,
    rng,
    z_init,
    num_steps: int,
    logsnr_schedule: schedules.LogSNRSchedule,
):
  """The stochastic N-step sampler of Meng et al. 2023 for distilled models.

  From t = (i + 1) / N, one deterministic DDIM step of twice the length, to
  (i - 1) / N, then back to i / N through the forward process with fresh
  noise from fold_in(rng, i); the last step (i = 0) is deterministic and
  returns the x prediction. The first of the double steps ends at t = 0,
  where DDIM returns the x prediction itself. N network evaluations, as
  DDIM; with N = 1 it is DDIM.
  """

  def body(k, z_t):
    i = num_steps - 1 - k
    batch = z_t.shape[0]
    logsnr_t, logsnr_s = _step_logsnrs(i, num_steps, logsnr_schedule, batch)
    # The end of the double step: (i - 1) / N, clamped at t = 0 for i = 0,
    # whose result is not used.
    logsnr_end = jnp.full(
        (batch,),
        logsnr_schedule(jnp.maximum(i - 1, 0).astype(jnp.float32) / num_steps),
        jnp.float32,
    )
    pred = denoise_fn(z_t, logsnr_t)
    z_end = jnp.where(i == 1, pred.x, ddim_step(pred, logsnr_s=logsnr_end))
    noise = jax.random.normal(jax.random.fold_in(rng, i), z_t.shape, z_t.dtype)
    z_s = renoise(z_end, logsnr_s=logsnr_end, logsnr_t=logsnr_s, noise=noise)
    return jnp.where(i == 0, pred.x, z_s)

  return jax.lax.fori_loop(0, num_steps, body, z_init)
