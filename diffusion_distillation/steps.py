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
from diffusion_distillation import network as network_lib
from diffusion_distillation import schedules
from diffusion_distillation import train_state as train_state_lib
from diffusion_distillation import unet


def _update(
    state,
    loss_fn,
    *,
    optimizer,
    ema_decay,
    ema_schedule,
    skip_nonfinite,
):
  """One optimizer step down loss_fn(params) -> scalar, with the EMA; with
  `skip_nonfinite`, a non-finite loss or gradient leaves the parameters as
  they were. Returns (state, metrics)."""
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


def _student_update(
    state,
    images,
    labels,
    rng,
    *,
    teacher_fn,
    num_steps,
    w,
    network,
    logsnr_schedule,
    mean_type,
    weighting,
    **update_settings,
):
  """One update of `network` on the denoising loss of [B, ...] `images`
  against `teacher_fn` in `num_steps` steps (None and 0: the data, in
  continuous time), at guidance strengths w (None: unguided)."""
  rng_loss, rng_dropout = rng

  def loss_fn(params):
    student_fn = network_lib.denoise_fn(
        network,
        params,
        labels,
        w=w,
        mean_type=mean_type,
        clip_x=False,
        train=True,
        dropout_rng=rng_dropout,
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

  return _update(state, loss_fn, **update_settings)


def _update_rngs(rng, state, *, guided: bool):
  """(loss, dropout[, guidance]) keys of this update: the step's key folded
  with the round and the step."""
  rng = jax.random.fold_in(
      jax.random.fold_in(rng, state.num_sample_steps), state.step
  )
  return jax.random.split(rng, 3 if guided else 2)


def _strengths(rng, labels, guidance):
  """Guidance strengths w ~ U[w_min, w_max], one per example."""
  return guidance_lib.sample_guidance(
      rng, labels.shape[0], w_min=guidance.w_min, w_max=guidance.w_max
  )


SUBSTEP_LOOPS = ('scan', 'unrolled')


def _scan_updates(update, state, batch, *, substep_loop: str):
  """update(state, images, labels) over batch['images'] [K, B, ...] and
  its labels, metrics averaged (skipped updates summed).

  substep_loop: 'scan' runs them in `lax.scan` (one traced body, compiles
    fast for any K); 'unrolled' traces them one after another. Both give the
    same state to float tolerance; see trainer.default_substep_loop for which
    suits which backend.
  """

  def body(state, images_labels):
    return update(state, *images_labels)

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


def train_step(state, batch, rng, *, substep_loop, guidance=None, **settings):
  """K updates of the continuous-time teacher on the data; a guided
  config's teacher sees each label dropped to the null label with
  probability p_uncond. Returns (state, metrics). Pure."""

  def update(state, images, labels):
    keys = _update_rngs(rng, state, guided=guidance is not None)
    if guidance is not None:
      labels = guidance_lib.drop_labels(
          keys[2],
          labels,
          null_label=guidance.null_label,
          p_uncond=guidance.p_uncond,
      )
    return _student_update(
        state,
        images,
        labels,
        keys[:2],
        teacher_fn=None,
        num_steps=0,
        w=None,
        **settings,
    )

  return _scan_updates(update, state, batch, substep_loop=substep_loop)


def distill_step(
    state,
    teacher_params,
    batch,
    rng,
    *,
    substep_loop,
    guidance=None,
    **settings,
):
  """K student updates: in `state.num_sample_steps` (traced) steps the
  student matches two DDIM steps of `teacher_params`, the same network. A
  guided config's student and teacher both take w ~ U[w_min, w_max] per
  example. Returns (state, metrics). Pure."""

  def update(state, images, labels):
    keys = _update_rngs(rng, state, guided=guidance is not None)
    w = None if guidance is None else _strengths(keys[2], labels, guidance)
    teacher_fn = network_lib.denoise_fn(
        settings['network'],
        jax.lax.stop_gradient(teacher_params),
        labels,
        w=w,
        mean_type=settings['mean_type'],
        clip_x=False,
    )
    return _student_update(
        state,
        images,
        labels,
        keys[:2],
        teacher_fn=teacher_fn,
        num_steps=state.num_sample_steps,
        w=w,
        **settings,
    )

  return _scan_updates(update, state, batch, substep_loop=substep_loop)


def guide_step(
    state,
    teacher_params,
    batch,
    rng,
    *,
    substep_loop,
    guidance,
    teacher_network,
    **settings,
):
  """K updates of the w-conditioned student against the guided teacher
  (`teacher_params` of `teacher_network`) at w ~ U[w_min, w_max] per
  example, in continuous time: stage one of guided distillation. Returns
  (state, metrics). Pure."""

  def update(state, images, labels):
    keys = _update_rngs(rng, state, guided=True)
    w = _strengths(keys[2], labels, guidance)
    teacher_fn = network_lib.denoise_fn(
        teacher_network,
        jax.lax.stop_gradient(teacher_params),
        labels,
        w=w,
        null_label=guidance.null_label,
        mean_type=settings['mean_type'],
        clip_x=False,
    )
    return _student_update(
        state,
        images,
        labels,
        keys[:2],
        teacher_fn=teacher_fn,
        num_steps=0,
        w=w,
        **settings,
    )

  return _scan_updates(update, state, batch, substep_loop=substep_loop)


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
