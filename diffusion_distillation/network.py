"""The U-Net a config describes, and its parameters.

`build_network(config, dropout=...)` maps `config.model` and
`config.dataset` onto `unet.UNet`; teachers train with `model.dropout`,
students and samplers pass their own rate (usually 0). `denoise_fn` turns a
network, its parameters and labels (and w) into the denoise_fn(z, logsnr)
that the steps train and the sampler samples; the guided wing wraps it for
its classifier-free teacher (diffusion_distillation/guided/denoise.py).

A guided config (one with a `guidance` section, see docs/guided.md) adds a
null class (index `dataset.num_classes`) to the class embedding and, for
its students, the embedding of the guidance strength w; unguided configs
build the release's network.
"""

import jax
import jax.numpy as jnp
import ml_collections

from diffusion_distillation import diffusion
from diffusion_distillation import unet


def is_guided(config: ml_collections.ConfigDict) -> bool:
  """Whether `config` is for classifier-free guidance and its distillation."""
  return 'guidance' in config


def build_network(
    config: ml_collections.ConfigDict,
    *,
    dropout: float,
    guidance_embedding: bool | None = None,
) -> unet.UNet:
  """The U-Net for `config.model`, with the given dropout rate.

  `guidance_embedding` (guided configs only) chooses the w-conditioned
  student's network (True, the default for a guided config: it also applies
  the teacher's parameters, see unet.UNet) or the guided teacher's (False).
  """
  model = config.model
  guided = is_guided(config)
  if guidance_embedding is None:
    guidance_embedding = guided
  if guidance_embedding and not guided:
    raise ValueError(
        'A guidance-strength embedding needs a guided config (a guidance '
        'section).'
    )
  num_classes = 1
  if config.dataset.class_conditional:
    num_classes = config.dataset.num_classes + int(guided)  # + null class
  return unet.UNet(
      ch=model.ch,
      emb_ch=model.emb_ch,
      out_ch=diffusion.output_channels(
          model.mean_type, config.dataset.channels
      ),
      ch_mult=tuple(model.ch_mult),
      num_res_blocks=model.num_res_blocks,
      attn_resolutions=tuple(model.attn_resolutions),
      dropout=dropout,
      num_classes=num_classes,
      num_heads=model.num_heads,
      head_dim=model.head_dim,
      logsnr_input_type=model.logsnr_input_type,
      resblock_resample=model.resblock_resample,
      num_groups=model.num_groups,
      dtype=jnp.dtype(model.dtype),
      guidance_embedding=guidance_embedding,
  )


def init_params(network: unet.UNet, config: ml_collections.ConfigDict, rng):
  """Freshly initialised network parameters (jit this, or eval_shape it);
  with the w-embedding when the network has one."""
  size, channels = config.dataset.image_size, config.dataset.channels
  x = jnp.zeros((1, size, size, channels), jnp.float32)
  inputs = (x, jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))
  if network.guidance_embedding:
    inputs += (jnp.zeros((1,)),)
  return network.init(rng, *inputs)['params']


def abstract_params(network: unet.UNet, config: ml_collections.ConfigDict):
  """The network's parameter shapes and dtypes, with no memory allocated."""
  return jax.eval_shape(
      lambda rng: init_params(network, config, rng), jax.random.key(0)
  )


GUIDANCE_EMBEDDING_PARAMS = ('w_dense0', 'w_dense1')


def has_guidance_embedding(params) -> bool:
  """Whether `params` are a w-conditioned network's (a guided student's)."""
  return all(name in params for name in GUIDANCE_EMBEDDING_PARAMS)


def add_guidance_embedding(teacher_params, student_params):
  """A w-conditioned student that starts as its guided teacher: every
  parameter from `teacher_params`, the w-embedding from `student_params`
  (freshly initialised: its last layer is zero, so the student's output is
  the teacher's conditional output at every w)."""
  extra = set(student_params) - set(teacher_params)
  if extra != set(GUIDANCE_EMBEDDING_PARAMS) or set(teacher_params) - set(
      student_params
  ):
    raise ValueError(
        'The student must be the teacher plus a w-embedding; it differs in '
        f'{sorted(extra ^ set(GUIDANCE_EMBEDDING_PARAMS))}.'
    )
  return {**student_params, **teacher_params}


def denoise_fn(
    network: unet.UNet,
    params,
    labels,
    *,
    mean_type: str,
    clip_x: bool,
    w=None,
    train: bool = False,
    dropout_rng=None,
):
  """denoise_fn(z, logsnr) of `network` at `params` for `labels` [B].

  w: guidance strengths ([B] or a scalar), an input of a network with a
    w-embedding (a guided config's students); None for one without.
  `train` applies dropout with `dropout_rng`.
  """
  rngs = {'dropout': dropout_rng} if train else {}
  kwargs = {} if w is None else {'w': w}
  return diffusion.make_denoise_fn(
      lambda z, logsnr: network.apply(
          {'params': params},
          z,
          logsnr,
          labels,
          train=train,
          rngs=rngs,
          **kwargs,
      ),
      mean_type=mean_type,
      clip_x=clip_x,
  )
