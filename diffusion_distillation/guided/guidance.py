"""Classifier-free guidance and its distillation, independent of any network.

Classifier-free guidance (Ho & Salimans 2021) trains one class-conditional
network whose label is replaced by a null label with probability p_uncond,
and samples with the guided prediction

  x_w = (1 + w) x_cond - w x_uncond.

The combination is made here in x, and equally in eps and v: with weights
that sum to one and the same z, x = (z - sigma eps) / alpha and
v = alpha eps - sigma x are affine in each other, so the three combinations
are the same prediction (exactly; each component is combined directly, so
no division by alpha or sigma amplifies rounding). What does depend on the
order is clipping: the branches are combined unclipped and the guided x is
clipped afterwards (sampling only), as clipping each branch first would
change the extrapolation. Meng et al. (2023) write the guided model in x as
above.

Guided distillation (Meng et al. 2023): stage one trains a student x(z, w)
that takes w as an input against the guided teacher at w ~ U[w_min, w_max]
per example; stage two distills that student progressively, each example
at its own w, the teacher being the previous w-conditioned model.

Networks enter as closures: `model_fn(z, logsnr, labels) -> raw output`.
"""

import jax
import jax.numpy as jnp

from diffusion_distillation import diffusion


def guided_prediction(
    cond: diffusion.Prediction, uncond: diffusion.Prediction, w
) -> diffusion.Prediction:
  """(1 + w) cond - w uncond, for x, eps and v alike (see module doc).

  w: a scalar or [B], broadcast from the left.
  """
  w = diffusion.broadcast_from_left(w, cond.x.shape)
  return jax.tree_util.tree_map(
      lambda c, u: (1.0 + w) * c - w * u, cond, uncond
  )


def clip_prediction(pred: diffusion.Prediction, *, z, logsnr):
  """x clipped to [-1, 1], eps and v recomputed from it (as predict does)."""
  return diffusion.prediction_from_x(
      z=z, x=jnp.clip(pred.x, -1.0, 1.0), logsnr=logsnr
  )


def make_guided_denoise_fn(
    model_fn,
    *,
    labels,
    null_label: int,
    w,
    mean_type: str,
    clip_x: bool,
) -> diffusion.DenoiseFn:
  """The guided teacher's denoise_fn(z, logsnr) at strength w.

  Args:
    model_fn: (z, logsnr, labels) -> raw network output, for [B'] inputs.
    labels: [B] int class labels.
    null_label: the unconditional label.
    w: scalar or [B] guidance strength.
    mean_type: the network's parameterisation.
    clip_x: clip the guided x (sampling only).

  The conditional and unconditional predictions come from ONE network call
  on the batch doubled to [2B] (two network evaluations per example).
  """
  diffusion.check_mean_type(mean_type)

  def denoise_fn(z, logsnr):
    batch = z.shape[0]
    logsnr = jnp.broadcast_to(logsnr, (batch,))
    both = lambda a, b: jnp.concatenate([a, b], axis=0)
    z2, logsnr2 = both(z, z), both(logsnr, logsnr)
    out = model_fn(z2, logsnr2, both(labels, jnp.full_like(labels, null_label)))
    pred = diffusion.predict(
        out, z=z2, logsnr=logsnr2, mean_type=mean_type, clip_x=False
    )
    cond = jax.tree_util.tree_map(lambda a: a[:batch], pred)
    uncond = jax.tree_util.tree_map(lambda a: a[batch:], pred)
    guided = guided_prediction(cond, uncond, w)
    return clip_prediction(guided, z=z, logsnr=logsnr) if clip_x else guided

  return denoise_fn


def drop_labels(rng, labels, *, null_label: int, p_uncond: float):
  """Each label replaced by `null_label` with probability p_uncond."""
  drop = jax.random.bernoulli(rng, p_uncond, labels.shape)
  return jnp.where(drop, jnp.asarray(null_label, labels.dtype), labels)


def sample_guidance(rng, batch_size: int, *, w_min: float, w_max: float):
  """w ~ U[w_min, w_max], [B] float32."""
  return jax.random.uniform(
      rng, (batch_size,), jnp.float32, minval=w_min, maxval=w_max
  )
