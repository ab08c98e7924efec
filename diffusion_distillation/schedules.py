"""Log-SNR schedules: t = 0 is the data end (logsnr_max), t = 1 the noise end.

The diffusion math works in log-SNR, lambda = log(alpha^2 / sigma^2), so a
schedule is a map from time t in [0, 1] to lambda. The cosine schedule is the
one every released config uses; `logsnr_min = -inf` gives alpha_1 = 0 exactly,
as the paper describes (the release instead clips at -20).
"""

import functools
import math
from collections.abc import Callable

import jax.numpy as jnp

LogSNRSchedule = Callable[[jnp.ndarray], jnp.ndarray]


def _cosine_angles(logsnr_min: float, logsnr_max: float):
  """Angles of the clipped cosine schedule, in float64 on the host.

  lambda(t) = -2 log tan(a t + b), with b = arctan(exp(-logsnr_max / 2)) and
  a + b = arctan(exp(-logsnr_min / 2)). `c = pi/2 - (a + b)` is the angle left
  over at t = 1; it is exactly 0 when logsnr_min = -inf.
  """
  _check_end_points(logsnr_min, logsnr_max)
  b = math.atan(math.exp(-0.5 * logsnr_max))
  end = math.atan(math.exp(-0.5 * logsnr_min))
  c = math.atan(math.exp(0.5 * logsnr_min))
  return end - b, b, c


def _check_end_points(logsnr_min, logsnr_max):
  if not logsnr_min < logsnr_max:
    raise ValueError(
        f'logsnr_min={logsnr_min} must be below logsnr_max={logsnr_max}.'
    )


def cosine_logsnr_schedule(t, *, logsnr_min: float, logsnr_max: float):
  """Cosine log-SNR schedule clipped to [logsnr_min, logsnr_max].

  Args:
    t: array of times in [0, 1].
    logsnr_min: lambda at t = 1; may be -inf.
    logsnr_max: lambda at t = 0.

  Returns:
    lambda(t), same shape as t. lambda(0) = logsnr_max, lambda(1) = logsnr_min.
  """
  a, b, c = _cosine_angles(logsnr_min, logsnr_max)
  t = jnp.asarray(t)
  # Near t = 1 the angle a t + b approaches pi/2, where float32 tan loses all
  # precision (and can even change sign). There we use the complementary
  # form -2 log tan(x) = 2 log tan(pi/2 - x), whose angle c + a (1 - t) is
  # small and exact, and which gives -inf at t = 1 when logsnr_min = -inf.
  near_data = -2.0 * jnp.log(jnp.tan(a * t + b))
  near_noise = 2.0 * jnp.log(jnp.tan(c + a * (1.0 - t)))
  return jnp.where(t < 0.5, near_data, near_noise)


def cosine_logsnr_schedule_inverse(
    logsnr, *, logsnr_min: float, logsnr_max: float
):
  """The time t at which the cosine schedule reaches `logsnr`."""
  a, b, _ = _cosine_angles(logsnr_min, logsnr_max)
  return (jnp.arctan(jnp.exp(-0.5 * jnp.asarray(logsnr))) - b) / a


_SCHEDULES = {
    'cosine': (cosine_logsnr_schedule, cosine_logsnr_schedule_inverse),
}


def get_logsnr_schedule(
    name: str, *, logsnr_min: float, logsnr_max: float
) -> LogSNRSchedule:
  """The schedule `name` ('cosine') with its end points bound."""
  _check_end_points(float(logsnr_min), float(logsnr_max))  # fail at build time
  return functools.partial(
      _lookup(name)[0],
      logsnr_min=float(logsnr_min),
      logsnr_max=float(logsnr_max),
  )


def get_logsnr_schedule_inverse(
    name: str, *, logsnr_min: float, logsnr_max: float
) -> LogSNRSchedule:
  """The inverse (lambda -> t) of the schedule `name`."""
  return functools.partial(
      _lookup(name)[1],
      logsnr_min=float(logsnr_min),
      logsnr_max=float(logsnr_max),
  )


def _lookup(name):
  if name not in _SCHEDULES:
    raise ValueError(
        f'Unknown logsnr schedule {name!r}; choose one of {sorted(_SCHEDULES)}.'
    )
  return _SCHEDULES[name]
