"""The guided wing's one "network + parameters + labels + w -> denoise
function" builder, for the steps and the sampler alike.

A guided config has two kinds of parameters for one network: its
teacher's, without a w-embedding, guided classifier-free at w (two network
evaluations, guidance.make_guided_denoise_fn), and its students', which
take w as an input (one evaluation, network.denoise_fn).
"""

from diffusion_distillation import network as network_lib
from diffusion_distillation import unet
from diffusion_distillation.guided import guidance


def denoise_fn(
    network: unet.UNet,
    params,
    labels,
    *,
    w,
    null_label: int,
    mean_type: str,
    clip_x: bool,
):
  """denoise_fn(z, logsnr) of `network` at `params` for `labels` [B] at
  guidance strengths w ([B] or a scalar): classifier-free against
  `null_label` for parameters without a w-embedding, w as the network's
  input for parameters with one."""
  if network_lib.has_guidance_embedding(params):
    return network_lib.denoise_fn(
        network, params, labels, w=w, mean_type=mean_type, clip_x=clip_x
    )
  return guidance.make_guided_denoise_fn(
      lambda z, logsnr, y: network.apply(
          {'params': params}, z, logsnr, y, train=False
      ),
      labels=labels,
      null_label=null_label,
      w=w,
      mean_type=mean_type,
      clip_x=clip_x,
  )
