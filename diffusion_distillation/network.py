"""The U-Net a config describes, and its parameters.

`build_network(config, dropout=...)` maps `config.model` and
`config.dataset` onto `unet.UNet`; teachers train with `model.dropout`,
students and samplers pass their own rate (usually 0).
"""

import jax
import jax.numpy as jnp
import ml_collections

from diffusion_distillation import diffusion
from diffusion_distillation import unet


def build_network(
    config: ml_collections.ConfigDict, *, dropout: float
) -> unet.UNet:
  """The U-Net for `config.model`, with the given dropout rate."""
  model = config.model
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
      num_classes=config.dataset.num_classes
      if config.dataset.class_conditional
      else 1,
      num_heads=model.num_heads,
      head_dim=model.head_dim,
      logsnr_input_type=model.logsnr_input_type,
      resblock_resample=model.resblock_resample,
      num_groups=model.num_groups,
      dtype=jnp.dtype(model.dtype),
  )


def init_params(network: unet.UNet, config: ml_collections.ConfigDict, rng):
  """Freshly initialised network parameters (jit this, or eval_shape it)."""
  size, channels = config.dataset.image_size, config.dataset.channels
  x = jnp.zeros((1, size, size, channels), jnp.float32)
  return network.init(rng, x, jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))[
      'params'
  ]


def abstract_params(network: unet.UNet, config: ml_collections.ConfigDict):
  """The network's parameter shapes and dtypes, with no memory allocated."""
  return jax.eval_shape(
      lambda rng: init_params(network, config, rng), jax.random.key(0)
  )
