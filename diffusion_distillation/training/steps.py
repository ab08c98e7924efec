"""Pure, jit-compiled, data-parallel training and distillation steps.

`train_step(state, batch, rng)` trains a continuous-time teacher;
`distill_step(state, teacher_params, batch, rng)` trains a student against
two DDIM steps of a teacher whose parameters are an argument (never a
closure), so a new round reuses the compiled step. Each call runs
`substeps` optimizer steps through `lax.scan` over a [K, B, ...] batch.

Both take an optional `condition` hook, condition(rng, labels) ->
(labels, w): what each update conditions its networks on, drawn from a key
of the update's own. Without one, the networks see the batch's labels and
no guidance strength; the guided wing (diffusion_distillation/guided)
passes one that drops labels for its teacher and one that draws w per
example for its students, and builds its own stage-one step from
`student_update`, `update_keys` and `scan_updates`.

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
from diffusion_distillation import network as network_lib
from diffusion_distillation import schedules
from diffusion_distillation import unet
from diffusion_distillation.training import train_state as train_state_lib


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


def student_update(
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
  continuous time); a network with a w-embedding takes the guidance
  strengths w [B] (None: a network without one). `rng`: the (loss,
  dropout) keys."""
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


def update_keys(rng, state, *, conditioned: bool):
  """(loss, dropout[, condition]) keys of this update: the step's key folded
  with the round and the step."""
  rng = jax.random.fold_in(
      jax.random.fold_in(rng, state.num_sample_steps), state.step
  )
  return jax.random.split(rng, 3 if conditioned else 2)


def _conditioned(condition, keys, labels):
  """(labels, w) of this update: the batch's and None without a hook."""
  if condition is None:
    return labels, None
  return condition(keys[2], labels)


SUBSTEP_LOOPS = ('scan', 'unrolled')


def scan_updates(update, state, batch, *, substep_loop: str):
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


def train_step(state, batch, rng, *, substep_loop, condition=None, **settings):
  """K updates of the continuous-time teacher on the data. Returns (state,
  metrics). Pure."""

  def update(state, images, labels):
    keys = update_keys(rng, state, conditioned=condition is not None)
    labels, w = _conditioned(condition, keys, labels)
    return student_update(
        state,
        images,
        labels,
        keys[:2],
        teacher_fn=None,
        num_steps=0,
        w=w,
        **settings,
    )

  return scan_updates(update, state, batch, substep_loop=substep_loop)


def distill_step(
    state,
    teacher_params,
    batch,
    rng,
    *,
    substep_loop,
    condition=None,
    **settings,
):
  """K student updates: in `state.num_sample_steps` (traced) steps the
  student matches two DDIM steps of `teacher_params`, the same network,
  both conditioned alike. Returns (state, metrics). Pure."""

  def update(state, images, labels):
    keys = update_keys(rng, state, conditioned=condition is not None)
    labels, w = _conditioned(condition, keys, labels)
    teacher_fn = network_lib.denoise_fn(
        settings['network'],
        jax.lax.stop_gradient(teacher_params),
        labels,
        w=w,
        mean_type=settings['mean_type'],
        clip_x=False,
    )
    return student_update(
        state,
        images,
        labels,
        keys[:2],
        teacher_fn=teacher_fn,
        num_steps=state.num_sample_steps,
        w=w,
        **settings,
    )

  return scan_updates(update, state, batch, substep_loop=substep_loop)


def step_settings(
    config: ml_collections.ConfigDict,
    section: str,
    *,
    network: unet.UNet,
    optimizer: optax.GradientTransformation,
    substep_loop: str,
) -> dict:
  """The static arguments every step takes, for config[section]; a phase
  adds its own (phases.Phase.step_options)."""
  model = config.model
  return dict(
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
