"""Pure, jit-compiled, data-parallel training and distillation steps.

`train_step(state, batch, rng)` trains a continuous-time teacher;
`distill_step(state, teacher_params, batch, rng)` trains a student against
two DDIM steps of a teacher whose parameters are an argument (never a
closure), so a new round reuses the compiled step. Each call runs
`substeps` optimizer steps through `lax.scan` over a [K, B, ...] batch.

With a `guidance` setting (guided configs, see guidance.py) the teacher
trains with labels dropped to the null label with probability p_uncond;
`guide_step(state, teacher_params, batch, rng)` trains the w-conditioned
student against the guided teacher in continuous time (stage one); and
`distill_step` samples w per example for the w-conditioned teacher and
student alike (stage two).

Data parallelism comes from how `trainer` compiles these functions (jit
over a one-axis device mesh, see `sharding`): the batch is sharded along B,
the state replicated; the loss is a mean over the global batch, so the
gradient is the all-device mean before clipping.
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from diffusion_distillation import diffusion
from diffusion_distillation import guidance as guidance_lib
from diffusion_distillation import schedules
from diffusion_distillation import train_state as train_state_lib
from diffusion_distillation import unet


def _apply_fn(
    network: unet.UNet,
    params,
    labels,
    *,
    train: bool,
    dropout_rng=None,
    guidance=None,
):
  """model_fn(z, logsnr) of `network` with fixed params, labels and (for a
  w-conditioned network) guidance strengths [B]."""
  rngs = {'dropout': dropout_rng} if train else {}
  kwargs = {} if guidance is None else {'w': guidance}
  return lambda z, logsnr: network.apply(
      {'params': params}, z, logsnr, labels, train=train, rngs=rngs, **kwargs
  )


def _guided_teacher_fn(network, params, labels, w, *, guidance, mean_type):
  """The guided teacher's denoise_fn at strengths w [B] (stage one)."""
  return guidance_lib.make_guided_denoise_fn(
      lambda z, logsnr, y: network.apply(
          {'params': params}, z, logsnr, y, train=False
      ),
      labels=labels,
      null_label=guidance.null_label,
      w=w,
      mean_type=mean_type,
      clip_x=False,
  )


def _one_update(
    state,
    images,
    labels,
    rng,
    teacher_params,
    *,
    network,
    optimizer,
    ema_decay,
    ema_schedule,
    logsnr_schedule,
    mean_type,
    weighting,
    skip_nonfinite,
    guidance=None,
    teacher_network=None,
):
  """One optimizer step on one [B, ...] batch.

  guidance: None (unguided), or the guidance.Guidance of a guided config.
  teacher_network: stage one only: the guided teacher's network (the
    student's is `network`, with its w-embedding).
  """
  rng = jax.random.fold_in(
      jax.random.fold_in(rng, state.num_sample_steps), state.step
  )
  w = None
  if guidance is None:
    rng_loss, rng_dropout = jax.random.split(rng)
  else:
    rng_loss, rng_dropout, rng_guidance = jax.random.split(rng, 3)
    if teacher_params is None:  # the guided teacher: drop labels
      labels = guidance_lib.drop_labels(
          rng_guidance,
          labels,
          null_label=guidance.null_label,
          p_uncond=guidance.p_uncond,
      )
    else:  # stages one and two: a strength per example
      w = guidance_lib.sample_guidance(
          rng_guidance,
          labels.shape[0],
          w_min=guidance.w_min,
          w_max=guidance.w_max,
      )
  teacher_fn = None
  if teacher_params is None:
    num_steps = 0  # continuous time
  elif teacher_network is not None:
    teacher_fn = _guided_teacher_fn(
        teacher_network,
        jax.lax.stop_gradient(teacher_params),
        labels,
        w,
        guidance=guidance,
        mean_type=mean_type,
    )
    num_steps = 0  # stage one: continuous time
  else:
    teacher_fn = diffusion.make_denoise_fn(
        _apply_fn(
            network,
            jax.lax.stop_gradient(teacher_params),
            labels,
            train=False,
            guidance=w,
        ),
        mean_type=mean_type,
        clip_x=False,
    )
    num_steps = state.num_sample_steps

  def loss_fn(params):
    student_fn = diffusion.make_denoise_fn(
        _apply_fn(
            network,
            params,
            labels,
            train=True,
            dropout_rng=rng_dropout,
            guidance=w,
        ),
        mean_type=mean_type,
        clip_x=False,
    )
    losses = diffusion.denoising_loss(
        student_fn,
        x=images,
        rng=rng_loss,
        logsnr_schedule=logsnr_schedule,
        num_steps=num_steps,
        weighting=weighting,
        teacher_fn=teacher_fn,
    )
    return jnp.mean(losses)

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(
      step=state.step + 1,
      params=params,
      opt_state=opt_state,
      ema_params=train_state_lib.ema_update(
          state.ema_params,
          params,
          ema_decay
          if ema_decay == 0.0
          else train_state_lib.ema_decay_at(
              state.step + 1, decay=ema_decay, schedule=ema_schedule
          ),
      ),
  )
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  if skip_nonfinite:
    # Keep the old parameters but count the step, so data and RNG move on.
    new_state = jax.tree_util.tree_map(
        lambda new, old: jnp.where(finite, new, old),
        new_state,
        state.replace(step=state.step + 1),
    )
  return new_state, {
      'loss': loss,
      'grad_norm': grad_norm,
      'nonfinite': 1.0 - finite.astype(jnp.float32),
  }


SUBSTEP_LOOPS = ('scan', 'unrolled')


def _scan_updates(
    state, batch, rng, teacher_params, *, substep_loop: str, **settings
):
  """`substeps` updates over batch['images'] [K, B, ...], metrics averaged.

  substep_loop: 'scan' runs them in `lax.scan` (one traced body, compiles
    fast for any K); 'unrolled' traces them one after another. Both give the
    same state to float tolerance; see trainer.default_substep_loop for which
    suits which backend.
  """

  def body(state, images_labels):
    images, labels = images_labels
    return _one_update(state, images, labels, rng, teacher_params, **settings)

  xs = (batch['images'], batch['labels'])
  if substep_loop == 'unrolled':
    per_step = []
    for k in range(xs[0].shape[0]):
      state, metrics = body(state, (xs[0][k], xs[1][k]))
      per_step.append(metrics)
    metrics = jax.tree_util.tree_map(lambda *m: jnp.stack(m), *per_step)
  elif substep_loop == 'scan':
    state, metrics = jax.lax.scan(body, state, xs)
  else:
    raise ValueError(
        f'Unknown substep_loop {substep_loop!r}; choose one of {SUBSTEP_LOOPS}.'
    )
  metrics = {
      'loss': jnp.mean(metrics['loss']),
      'grad_norm': jnp.mean(metrics['grad_norm']),
      'nonfinite': jnp.sum(metrics['nonfinite']),
  }
  return state, metrics


def train_step(state, batch, rng, **settings):
  """K teacher updates; returns (state, metrics). Pure."""
  return _scan_updates(state, batch, rng, None, **settings)


def distill_step(state, teacher_params, batch, rng, **settings):
  """K student updates against `teacher_params`; returns (state, metrics).

  The student's step count is `state.num_sample_steps` (traced).
  """
  return _scan_updates(state, batch, rng, teacher_params, **settings)


def guide_step(state, teacher_params, batch, rng, **settings):
  """K updates of the w-conditioned student against the guided teacher
  (`teacher_params`, network `settings['teacher_network']`) in continuous
  time: stage one of guided distillation. Returns (state, metrics). Pure."""
  return _scan_updates(state, batch, rng, teacher_params, **settings)


def guidance_settings(config: ml_collections.ConfigDict):
  """The guidance.Guidance of a guided config; None for an unguided one."""
  if 'guidance' not in config:
    return None
  return guidance_lib.Guidance(
      null_label=int(config.dataset.num_classes),
      p_uncond=float(config.guidance.p_uncond),
      w_min=float(config.guidance.w_min),
      w_max=float(config.guidance.w_max),
  )


def step_settings(
    config: ml_collections.ConfigDict,
    section: str,
    *,
    network: unet.UNet,
    optimizer: optax.GradientTransformation,
    substep_loop: str,
) -> dict:
  """The static arguments of a step for config[section] ('train' /
  'distill', or 'guide' with its teacher_network added by the caller)."""
  model = config.model
  guidance = guidance_settings(config)
  extra = {} if guidance is None else {'guidance': guidance}
  return dict(
      **extra,
      network=network,
      optimizer=optimizer,
      substep_loop=substep_loop,
      ema_decay=float(config[section].ema_decay),
      ema_schedule=config[section].get('ema_schedule', 'constant'),
      logsnr_schedule=schedules.get_logsnr_schedule(**model.logsnr_schedule),
      mean_type=model.mean_type,
      weighting=model.mean_loss_weight_type,
      skip_nonfinite=bool(config[section].get('skip_nonfinite_updates', False)),
  )
