"""The train state, its optimizer and its EMA."""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from diffusion_distillation import network as network_lib


@flax.struct.dataclass
class TrainState:
  """Everything a teacher or student run updates.

  step: int32 optimizer steps taken in this phase (a round restarts at 0).
  num_sample_steps: int32, the student's step count N; 0 for a
    continuous-time teacher. Traced, so rounds of equal shapes share one
    compiled step.
  """

  step: jnp.ndarray
  params: Any
  opt_state: Any
  ema_params: Any
  num_sample_steps: jnp.ndarray


def learning_rate_schedule(
    *, learning_rate: float, warmup_steps: int, decay_steps: int = 0
) -> optax.Schedule:
  """Linear warmup to `learning_rate`, then constant, or (decay_steps > 0)
  linear decay to 0 at step `decay_steps`: the release declared both but
  implemented neither."""
  warmup = optax.linear_schedule(0.0, learning_rate, max(warmup_steps, 1))
  if decay_steps <= 0:
    after = optax.constant_schedule(learning_rate)
  else:
    after = optax.linear_schedule(
        learning_rate, 0.0, max(decay_steps - warmup_steps, 1)
    )
  if warmup_steps <= 0:
    return after
  return optax.join_schedules([warmup, after], [warmup_steps])


def make_optimizer(
    config: ml_collections.ConfigDict, section: str, *, decay_steps: int = 0
) -> optax.GradientTransformation:
  """Adam (config.adam) with config[section]'s learning rate and decoupled
  weight decay, after global-norm clipping.

  The gradient that reaches this transform is already the mean over all
  devices (the loss is a mean over the global batch), so clipping acts on
  the data-parallel gradient, not per device as the release did.
  """
  phase, adam = config[section], config.adam
  lr = learning_rate_schedule(
      learning_rate=phase.learning_rate,
      warmup_steps=phase.warmup_steps,
      decay_steps=decay_steps,
  )
  transforms = []
  if adam.grad_clip > 0:
    transforms.append(optax.clip_by_global_norm(adam.grad_clip))
  transforms.append(
      optax.adamw(
          lr,
          b1=adam.b1,
          b2=adam.b2,
          eps=adam.eps,
          weight_decay=phase.weight_decay,
      )
  )
  return optax.chain(*transforms)


EMA_SCHEDULES = ('constant', 'warmup', 'debias')


def ema_decay_at(update: jnp.ndarray, *, decay: float, schedule: str):
  """The EMA decay of the `update`-th update (1, 2, ...), traced or not.

  'constant': `decay` from the first update, as the release; the EMA starts
    at the initial parameters, which keep a share decay^n after n updates.
  'warmup': min(decay, (n - 1) / (n + 9)): the first update copies the
    parameters, then the averaging window grows like n / 10 until it reaches
    1 / (1 - decay).
  'debias': the bias-corrected EMA (as Adam's moments): an EMA started at
    zero divided by 1 - decay^n, written as the per-update decay
    decay (1 - decay^(n-1)) / (1 - decay^n). The first update copies too.
  """
  check_ema_schedule(schedule)
  n = jnp.asarray(update, jnp.float32)
  if schedule == 'constant' or decay == 0.0:
    return jnp.asarray(decay, jnp.float32)
  if schedule == 'warmup':
    return jnp.minimum(decay, (n - 1.0) / (n + 9.0))
  # -expm1(n log d) = 1 - d^n without cancelling when d is near 1.
  log_decay = jnp.log(jnp.asarray(decay, jnp.float32))
  return decay * jnp.expm1((n - 1.0) * log_decay) / jnp.expm1(n * log_decay)


def check_ema_schedule(schedule: str):
  if schedule not in EMA_SCHEDULES:
    raise ValueError(
        f'Unknown ema_schedule {schedule!r}; choose one of {EMA_SCHEDULES}.'
    )


def ema_update(ema_params, params, decay):
  """Exponential moving average; a Python 0 (no EMA) copies the parameters.

  `decay` may be traced (a schedule's value at the current step).
  """
  if isinstance(decay, float) and decay == 0.0:
    return params
  return jax.tree_util.tree_map(
      lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params
  )


def create_state(
    params,
    optimizer: optax.GradientTransformation,
    *,
    num_sample_steps: int = 0,
) -> TrainState:
  """A fresh state around `params` (EMA starts at the parameters)."""
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=optimizer.init(params),
      ema_params=params,
      num_sample_steps=jnp.asarray(num_sample_steps, jnp.int32),
  )


def abstract_state(network, config, optimizer) -> TrainState:
  """Shapes and dtypes of the state, with no memory allocated."""
  return jax.eval_shape(
      lambda rng: create_state(
          network_lib.init_params(network, config, rng), optimizer
      ),
      jax.random.key(0),
  )
