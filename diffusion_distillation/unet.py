"""The release's iDDPM-style U-Net as a Flax linen module.

Submodule and parameter names follow Google's released checkpoints
(`conv_in`, `dense0`, `down_0.block_1`, `mid.attn_1`, `up_2.upsample`, ...)
so that their `ema_params` map onto this module by name.
"""

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

LOGSNR_INPUT_TYPES = ('inv_cos', 'linear', 'sigmoid')


def check_logsnr_input_type(logsnr_input_type: str):
  if logsnr_input_type not in LOGSNR_INPUT_TYPES:
    raise ValueError(
        f'Unknown logsnr_input_type {logsnr_input_type!r}; '
        f'choose one of {LOGSNR_INPUT_TYPES}.'
    )


def logsnr_to_time(
    logsnr, *, logsnr_input_type: str, logsnr_scale_range=(-10.0, 10.0)
):
  """Maps log-SNR to the scalar in roughly [0, 1] that the network embeds.

  'inv_cos' inverts the unclipped cosine schedule (lambda in [-20, 20]):
  t = arctan(exp(-lambda / 2)) / (pi / 2).
  """
  if logsnr_input_type == 'inv_cos':
    return jnp.arctan(jnp.exp(-0.5 * jnp.clip(logsnr, -20.0, 20.0))) / (
        0.5 * jnp.pi
    )
  if logsnr_input_type == 'linear':
    low, high = logsnr_scale_range
    return (logsnr - low) / (high - low)
  if logsnr_input_type == 'sigmoid':
    return jax.nn.sigmoid(logsnr)
  raise ValueError(
      f'Unknown logsnr_input_type {logsnr_input_type!r}; '
      f'choose one of {LOGSNR_INPUT_TYPES}.'
  )


def sinusoidal_embedding(t, dim: int, scale: float = 1000.0):
  """Sinusoidal features [sin, cos] of `scale * t`: [B] -> [B, dim]."""
  half = dim // 2
  freqs = jnp.exp(-math.log(10000.0) / (half - 1) * jnp.arange(half))
  angles = (scale * t.astype(jnp.float32))[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=1)
  return jnp.pad(emb, ((0, 0), (0, dim % 2)))


# Sinusoidal scale of the guidance strength w: w in [0, 4] spans the angles
# that t in [0, 1] spans in the time embedding (scale 1000).
GUIDANCE_EMBEDDING_SCALE = 250.0


def upsample_nearest(x):
  """[B, H, W, C] -> [B, 2H, 2W, C] by repeating each pixel."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def downsample_avg(x):
  """[B, H, W, C] -> [B, H/2, W/2, C] by 2x2 average pooling."""
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


class ResnetBlock(nn.Module):
  """GN-swish-conv, FiLM by the embedding, GN-swish-dropout-conv, residual."""

  dropout: float
  out_ch: int | None = None
  resample: str | None = None  # None | 'up' | 'down'
  num_groups: int = 32
  dtype: Any = None  # of convolutions and dense layers; None: as inputs

  @nn.compact
  def __call__(self, x, emb, *, train: bool):
    in_ch = x.shape[-1]
    out_ch = in_ch if self.out_ch is None else self.out_ch
    h = nn.swish(nn.GroupNorm(self.num_groups, name='norm1')(x))
    if self.resample is not None:
      resample = {'up': upsample_nearest, 'down': downsample_avg}[self.resample]
      h, x = resample(h), resample(x)
    h = nn.Conv(out_ch, (3, 3), dtype=self.dtype, name='conv1')(h)
    scale, shift = jnp.split(
        nn.Dense(2 * out_ch, dtype=self.dtype, name='temb_proj')(nn.swish(emb))[
            :, None, None
        ],
        2,
        axis=-1,
    )
    h = nn.GroupNorm(self.num_groups, name='norm2')(h) * (1.0 + scale) + shift
    h = nn.Dropout(self.dropout)(nn.swish(h), deterministic=not train)
    h = nn.Conv(
        out_ch,
        (3, 3),
        kernel_init=nn.initializers.zeros,
        dtype=self.dtype,
        name='conv2',
    )(h)
    if in_ch != out_ch:
      x = nn.Dense(out_ch, dtype=self.dtype, name='nin_shortcut')(x)
    return x + h


class AttnBlock(nn.Module):
  """Multi-head self-attention over all pixels, residual."""

  num_heads: int | None = None
  head_dim: int | None = None
  num_groups: int = 32
  dtype: Any = None  # of the projections and the two matmuls

  @nn.compact
  def __call__(self, x):
    batch, height, width, channels = x.shape
    num_heads, head_dim = attention_heads(
        channels, self.num_heads, self.head_dim
    )
    h = nn.GroupNorm(self.num_groups, name='norm')(x)
    h = h.reshape(batch, height * width, channels)
    qkv = [
        nn.DenseGeneral((num_heads, head_dim), dtype=self.dtype, name=name)(h)
        for name in ('q', 'k', 'v')
    ]
    # The softmax in float32 at least, whatever the matmuls' dtype.
    h = nn.dot_product_attention(
        *qkv, force_fp32_for_softmax=_below_float32(self.dtype)
    )
    h = nn.DenseGeneral(
        channels,
        axis=(-2, -1),
        kernel_init=nn.initializers.zeros,
        dtype=self.dtype,
        name='proj_out',
    )(h)
    return x + h.reshape(x.shape)


def _below_float32(dtype) -> bool:
  return dtype is not None and jnp.finfo(dtype).bits < 32


def attention_heads(channels, num_heads, head_dim):
  """(num_heads, head_dim) from exactly one of the two."""
  if (num_heads is None) == (head_dim is None):
    raise ValueError(
        'Give exactly one of num_heads and head_dim, got '
        f'num_heads={num_heads}, head_dim={head_dim}.'
    )
  if head_dim is None:
    if channels % num_heads:
      raise ValueError(
          f'{channels} channels do not split into {num_heads} attention heads.'
      )
    return num_heads, channels // num_heads
  if channels % head_dim:
    raise ValueError(
        f'{channels} channels do not split into heads of head_dim={head_dim}.'
    )
  return channels // head_dim, head_dim


class UNet(nn.Module):
  """U-Net denoiser: (x [B, H, W, C], logsnr [B], y [B]) -> [B, H, W, out_ch].

  Attributes mirror the release's `model.args`. `num_classes=1` means
  unconditional (y is ignored); `resblock_resample` chooses resampling
  ResBlocks (every released config) over strided/nearest convolutions.

  `guidance_embedding=True` makes the network take the classifier-free
  guidance strength w (Meng et al. 2023, stage one): a sinusoidal embedding
  of w through its own two dense layers (`w_dense0`, `w_dense1`, the second
  zero-initialised) is added to the time embedding. Called without w, such a
  network neither creates nor reads those parameters: it is its guided
  teacher's network, so a student built from the teacher's parameters plus
  a fresh w-embedding starts out equal to the teacher's conditional model.
  Off (the default) the parameter tree is the release's.

  `dtype` is the computation dtype of convolutions, dense layers and the
  attention matmuls; parameters stay float32 (`param_dtype`), GroupNorm
  statistics, the softmax and the time embedding are computed in float32,
  and the output is float32, so the diffusion math and the loss never see
  bfloat16. The parameter tree is the same for every dtype. The default,
  None, computes in the dtype of the inputs and parameters.
  """

  ch: int
  emb_ch: int
  out_ch: int
  ch_mult: Sequence[int]
  num_res_blocks: int
  attn_resolutions: Sequence[int]
  dropout: float = 0.0
  num_classes: int = 1
  num_heads: int | None = None
  head_dim: int | None = None
  logsnr_input_type: str = 'inv_cos'
  logsnr_scale_range: Sequence[float] = (-10.0, 10.0)
  resblock_resample: bool = True
  num_groups: int = 32  # GroupNorm groups; the release always uses 32
  # jnp.bfloat16 for mixed precision; None computes in the dtype of the
  # inputs and parameters (flax's rule), as the release does: float64 under
  # jax_enable_x64 with float64 parameters.
  dtype: Any = None
  guidance_embedding: bool = False  # take the guidance strength w as input

  @nn.compact
  def __call__(self, x, logsnr, y=None, w=None, *, train: bool = False):
    batch = x.shape[0]
    num_levels = len(self.ch_mult)
    if x.shape[1] % 2 ** (num_levels - 1) or x.shape[2] % 2 ** (num_levels - 1):
      raise ValueError(
          f'Image size {x.shape[1:3]} is not divisible by '
          f'2**{num_levels - 1} for ch_mult={self.ch_mult}.'
      )
    logsnr = jnp.broadcast_to(logsnr, (batch,))

    t = logsnr_to_time(
        logsnr,
        logsnr_input_type=self.logsnr_input_type,
        logsnr_scale_range=tuple(self.logsnr_scale_range),
    )
    emb = sinusoidal_embedding(t, self.ch)
    emb = nn.Dense(self.emb_ch, dtype=self.dtype, name='dense0')(emb)
    emb = nn.Dense(self.emb_ch, dtype=self.dtype, name='dense1')(nn.swish(emb))
    if self.num_classes > 1:
      if y is None:
        raise ValueError(
            'This network is class-conditional '
            f'(num_classes={self.num_classes}): pass labels y.'
        )
      emb += nn.Dense(self.emb_ch, dtype=self.dtype, name='class_emb')(
          jax.nn.one_hot(y, self.num_classes, dtype=emb.dtype)
      )
    if w is not None:
      emb += self._guidance_embedding(jnp.broadcast_to(w, (batch,)))

    block = lambda name, **kw: ResnetBlock(
        dropout=self.dropout,
        num_groups=self.num_groups,
        dtype=self.dtype,
        name=name,
        **kw,
    )
    attn = lambda name: AttnBlock(
        self.num_heads,
        self.head_dim,
        self.num_groups,
        dtype=self.dtype,
        name=name,
    )

    skips = [nn.Conv(self.ch, (3, 3), dtype=self.dtype, name='conv_in')(x)]
    for level in range(num_levels):
      for j in range(self.num_res_blocks):
        h = block(
            f'down_{level}.block_{j}', out_ch=self.ch * self.ch_mult[level]
        )(skips[-1], emb, train=train)
        if h.shape[1] in self.attn_resolutions:
          h = attn(f'down_{level}.attn_{j}')(h)
        skips.append(h)
      if level != num_levels - 1:
        skips.append(
            self._resample(
                skips[-1], emb, 'down', f'down_{level}.downsample', train
            )
        )

    h = block('mid.block_1')(skips[-1], emb, train=train)
    h = attn('mid.attn_1')(h)
    h = block('mid.block_2')(h, emb, train=train)

    for level in reversed(range(num_levels)):
      for j in range(self.num_res_blocks + 1):
        h = block(
            f'up_{level}.block_{j}', out_ch=self.ch * self.ch_mult[level]
        )(jnp.concatenate([h, skips.pop()], axis=-1), emb, train=train)
        if h.shape[1] in self.attn_resolutions:
          h = attn(f'up_{level}.attn_{j}')(h)
      if level != 0:
        h = self._resample(h, emb, 'up', f'up_{level}.upsample', train)

    h = nn.swish(nn.GroupNorm(self.num_groups, name='norm_out')(h))
    out = nn.Conv(
        self.out_ch,
        (3, 3),
        kernel_init=nn.initializers.zeros,
        dtype=self.dtype,
        name='conv_out',
    )(h)
    # bfloat16 leaves as float32 for the diffusion math; float64 stays.
    return out.astype(jnp.promote_types(out.dtype, jnp.float32))

  def _guidance_embedding(self, w):
    """[B] guidance strengths -> [B, emb_ch], zero at initialisation."""
    if not self.guidance_embedding:
      raise ValueError(
          'This network takes no guidance strength w: build it with '
          'guidance_embedding=True.'
      )
    emb = sinusoidal_embedding(w, self.ch, scale=GUIDANCE_EMBEDDING_SCALE)
    emb = nn.Dense(self.emb_ch, dtype=self.dtype, name='w_dense0')(emb)
    return nn.Dense(
        self.emb_ch,
        kernel_init=nn.initializers.zeros,
        dtype=self.dtype,
        name='w_dense1',
    )(nn.swish(emb))

  def _resample(self, x, emb, direction, name, train):
    if self.resblock_resample:
      return ResnetBlock(
          dropout=self.dropout,
          resample=direction,
          num_groups=self.num_groups,
          dtype=self.dtype,
          name=name,
      )(x, emb, train=train)
    channels = x.shape[-1]
    if direction == 'down':
      return nn.Conv(
          channels, (3, 3), strides=(2, 2), dtype=self.dtype, name=name
      )(x)
    return nn.Conv(channels, (3, 3), dtype=self.dtype, name=name)(
        upsample_nearest(x)
    )
