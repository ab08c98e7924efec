"""InceptionV3 of the FID graph that the ADM evaluator runs, in Flax: the
network and its parameters' shapes.

The ADM evaluator (openai/guided-diffusion, `evaluations/evaluator.py`) runs
TensorFlow's frozen `classify_image_graph_def.pb` (Inception, 2015-12-05). It
feeds pixel values in [0, 255] as float [N, H, W, 3] at `ExpandDims:0`;
the graph resizes them to 299x299 with TF1's ResizeBilinear
(align_corners=False, no half-pixel centres), maps them to (x - 128) / 128
and runs InceptionV3 in its FID form: average pools that leave the padding
out of the mean, and a max pool in the last block's pool branch. FID reads
`pool_3` [N, 2048]; the Inception Score is softmax(pool_3 @ W) with the
graph's `softmax/weights` W [2048, 1008] and no bias. This module holds
`tf1_resize_bilinear` and `InceptionV3`; inception_features.py runs them
over many images.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INPUT_SIZE = 299  # the graph's ResizeBilinear target
POOL_DIM = 2048
NUM_LOGITS = 1008  # the 2015 graph's classes: ImageNet's 1000 and 8 unused
BN_EPSILON = 1e-3  # the graph's variance_epsilon


# ----------------------------------------------------------------------------
# Preprocessing as the graph does it.


def _tf1_axis(in_size: int, out_size: int):
  """Source indices and weights of TF1's legacy bilinear resize, one axis.

  TF computes in float32: scale = in / out, source = i * scale, lower =
  floor(source), upper = min(ceil(source), in - 1), weight = source - lower.
  """
  scale = np.float32(in_size) / np.float32(out_size)
  source = np.arange(out_size, dtype=np.float32) * scale
  lower = np.floor(source)
  upper = np.minimum(np.ceil(source), in_size - 1)
  return lower.astype(np.int32), upper.astype(np.int32), source - lower


def tf1_resize_bilinear(images, size: int):
  """[B, H, W, C] float32 -> [B, size, size, C] as TF1's ResizeBilinear
  (align_corners=False, half_pixel_centers=False), which the FID graph
  applies to its input. It differs from jax.image.resize (half-pixel
  centres): upsampling 32x32 to 299x299, the two disagree by up to a few
  pixel levels."""
  _, height, width, _ = images.shape
  top_index, bottom_index, y_weight = _tf1_axis(height, size)
  left_index, right_index, x_weight = _tf1_axis(width, size)
  x_weight = x_weight[None, None, :, None]
  y_weight = y_weight[None, :, None, None]

  def along_x(rows):
    left = jnp.take(rows, left_index, axis=2)
    right = jnp.take(rows, right_index, axis=2)
    return left + (right - left) * x_weight

  # The order of TF's kernel: each row pair along x first, then along y.
  top = along_x(jnp.take(images, top_index, axis=1))
  bottom = along_x(jnp.take(images, bottom_index, axis=1))
  return top + (bottom - top) * y_weight


# ----------------------------------------------------------------------------
# The network.


class _BatchNorm(nn.Module):
  """Batch norm with frozen statistics, as the graph's inference op."""

  @nn.compact
  def __call__(self, x):
    shape = (x.shape[-1],)
    scale = self.param('scale', nn.initializers.ones, shape)
    bias = self.param('bias', nn.initializers.zeros, shape)
    mean = self.param('mean', nn.initializers.zeros, shape)
    var = self.param('var', nn.initializers.ones, shape)
    return (x - mean) * (jax.lax.rsqrt(var + BN_EPSILON) * scale) + bias


class _ConvBN(nn.Module):
  """Convolution without bias, batch norm, ReLU."""

  features: int
  kernel: tuple = (1, 1)
  strides: int = 1
  padding: str = 'SAME'

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(
        self.features,
        self.kernel,
        self.strides,
        self.padding,
        use_bias=False,
        # Float32 products on TPU and GPU too (the default rounds the inputs
        # to bfloat16 or TF32): FID is compared to a float32 TF graph.
        precision=jax.lax.Precision.HIGHEST,
        name='conv',
    )(x)
    return nn.relu(_BatchNorm(name='bn')(x))


def _avg_pool(x):
  # TF's SAME average pool divides by the number of unpadded inputs.
  return nn.avg_pool(x, (3, 3), padding='SAME', count_include_pad=False)


def _max_pool(x, strides=2, padding='VALID'):
  return nn.max_pool(x, (3, 3), (strides, strides), padding)


class _InceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    a = _ConvBN(64, name='branch1x1')(x)
    b = _ConvBN(48, name='branch5x5_1')(x)
    b = _ConvBN(64, (5, 5), name='branch5x5_2')(b)
    c = _ConvBN(64, name='branch3x3dbl_1')(x)
    c = _ConvBN(96, (3, 3), name='branch3x3dbl_2')(c)
    c = _ConvBN(96, (3, 3), name='branch3x3dbl_3')(c)
    d = _ConvBN(self.pool_features, name='branch_pool')(_avg_pool(x))
    return jnp.concatenate([a, b, c, d], axis=-1)


class _InceptionB(nn.Module):

  @nn.compact
  def __call__(self, x):
    a = _ConvBN(384, (3, 3), 2, 'VALID', name='branch3x3')(x)
    b = _ConvBN(64, name='branch3x3dbl_1')(x)
    b = _ConvBN(96, (3, 3), name='branch3x3dbl_2')(b)
    b = _ConvBN(96, (3, 3), 2, 'VALID', name='branch3x3dbl_3')(b)
    return jnp.concatenate([a, b, _max_pool(x)], axis=-1)


class _InceptionC(nn.Module):
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    width = self.channels_7x7
    a = _ConvBN(192, name='branch1x1')(x)
    b = _ConvBN(width, name='branch7x7_1')(x)
    b = _ConvBN(width, (1, 7), name='branch7x7_2')(b)
    b = _ConvBN(192, (7, 1), name='branch7x7_3')(b)
    c = _ConvBN(width, name='branch7x7dbl_1')(x)
    c = _ConvBN(width, (7, 1), name='branch7x7dbl_2')(c)
    c = _ConvBN(width, (1, 7), name='branch7x7dbl_3')(c)
    c = _ConvBN(width, (7, 1), name='branch7x7dbl_4')(c)
    c = _ConvBN(192, (1, 7), name='branch7x7dbl_5')(c)
    d = _ConvBN(192, name='branch_pool')(_avg_pool(x))
    return jnp.concatenate([a, b, c, d], axis=-1)


class _InceptionD(nn.Module):

  @nn.compact
  def __call__(self, x):
    a = _ConvBN(192, name='branch3x3_1')(x)
    a = _ConvBN(320, (3, 3), 2, 'VALID', name='branch3x3_2')(a)
    b = _ConvBN(192, name='branch7x7x3_1')(x)
    b = _ConvBN(192, (1, 7), name='branch7x7x3_2')(b)
    b = _ConvBN(192, (7, 1), name='branch7x7x3_3')(b)
    b = _ConvBN(192, (3, 3), 2, 'VALID', name='branch7x7x3_4')(b)
    return jnp.concatenate([a, b, _max_pool(x)], axis=-1)


class _InceptionE(nn.Module):
  max_pool: bool  # the graph's last block pools by max, the one before by mean

  @nn.compact
  def __call__(self, x):
    a = _ConvBN(320, name='branch1x1')(x)
    b = _ConvBN(384, name='branch3x3_1')(x)
    b = jnp.concatenate(
        [
            _ConvBN(384, (1, 3), name='branch3x3_2a')(b),
            _ConvBN(384, (3, 1), name='branch3x3_2b')(b),
        ],
        axis=-1,
    )
    c = _ConvBN(448, name='branch3x3dbl_1')(x)
    c = _ConvBN(384, (3, 3), name='branch3x3dbl_2')(c)
    c = jnp.concatenate(
        [
            _ConvBN(384, (1, 3), name='branch3x3dbl_3a')(c),
            _ConvBN(384, (3, 1), name='branch3x3dbl_3b')(c),
        ],
        axis=-1,
    )
    pooled = _max_pool(x, 1, 'SAME') if self.max_pool else _avg_pool(x)
    d = _ConvBN(192, name='branch_pool')(pooled)
    return jnp.concatenate([a, b, c, d], axis=-1)


class InceptionV3(nn.Module):
  """The FID graph's InceptionV3 after its preprocessing.

  Input: [B, H, W, 3] float32 in [-1, 1), H, W >= 75 (299 in the graph).
  Output: (pool_3 features [B, 2048], logits without bias [B, 1008]).
  """

  @nn.compact
  def __call__(self, x):
    x = _ConvBN(32, (3, 3), 2, 'VALID', name='Conv2d_1a_3x3')(x)
    x = _ConvBN(32, (3, 3), padding='VALID', name='Conv2d_2a_3x3')(x)
    x = _ConvBN(64, (3, 3), name='Conv2d_2b_3x3')(x)
    x = _max_pool(x)
    x = _ConvBN(80, padding='VALID', name='Conv2d_3b_1x1')(x)
    x = _ConvBN(192, (3, 3), padding='VALID', name='Conv2d_4a_3x3')(x)
    x = _max_pool(x)
    x = _InceptionA(32, name='Mixed_5b')(x)
    x = _InceptionA(64, name='Mixed_5c')(x)
    x = _InceptionA(64, name='Mixed_5d')(x)
    x = _InceptionB(name='Mixed_6a')(x)
    x = _InceptionC(128, name='Mixed_6b')(x)
    x = _InceptionC(160, name='Mixed_6c')(x)
    x = _InceptionC(160, name='Mixed_6d')(x)
    x = _InceptionC(192, name='Mixed_6e')(x)
    x = _InceptionD(name='Mixed_7a')(x)
    x = _InceptionE(max_pool=False, name='Mixed_7b')(x)
    x = _InceptionE(max_pool=True, name='Mixed_7c')(x)
    pool = jnp.mean(x, axis=(1, 2))
    # The ADM evaluator's Inception Score multiplies by the graph's
    # softmax/weights only, without softmax/biases.
    kernel = self.param(
        'kernel', nn.initializers.lecun_normal(), (POOL_DIM, NUM_LOGITS)
    )
    logits = jnp.dot(pool, kernel, precision=jax.lax.Precision.HIGHEST)
    return pool, logits


@functools.cache
def abstract_params() -> dict:
  """The parameters' shapes: a nested dict of jax.ShapeDtypeStruct."""
  shapes = jax.eval_shape(
      lambda: InceptionV3().init(
          jax.random.key(0), jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3))
      )['params']
  )
  # The logits' kernel lives under 'fc', as in fidjax's layout.
  shapes = dict(shapes)
  shapes['fc'] = {'kernel': shapes.pop('kernel')}
  return shapes


def module_params(params: dict) -> dict:
  """Weights in the library's layout -> the Flax module's parameters."""
  params = dict(params)
  params['kernel'] = params.pop('fc')['kernel']
  return params


def random_params(seed: int) -> dict:
  """Random weights in the library's layout (tests and benchmarks): the
  initialiser's kernels, batch-norm statistics and affine drawn around the
  identity. NumPy float32 arrays."""
  shapes = abstract_params()
  rng = np.random.default_rng(seed)
  bn_draws = {
      'scale': lambda n: rng.uniform(0.5, 1.5, n),
      'bias': lambda n: rng.normal(0.0, 0.1, n),
      'mean': lambda n: rng.normal(0.0, 0.1, n),
      'var': lambda n: rng.uniform(0.5, 1.5, n),
  }

  def draw(path, leaf):
    name = path[-1].key
    if name in bn_draws:
      return bn_draws[name](leaf.shape).astype(np.float32)
    fan_in = int(np.prod(leaf.shape[:-1]))
    return rng.normal(0.0, fan_in**-0.5, leaf.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)
