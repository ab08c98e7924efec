"""InceptionV3 of the FID graph that the ADM evaluator runs, in Flax.

The ADM evaluator (openai/guided-diffusion, `evaluations/evaluator.py`) runs
TensorFlow's frozen `classify_image_graph_def.pb` (Inception, 2015-12-05). It
feeds pixel values in [0, 255] as float [N, H, W, 3] at `ExpandDims:0`;
the graph resizes them to 299x299 with TF1's ResizeBilinear
(align_corners=False, no half-pixel centres), maps them to (x - 128) / 128
and runs InceptionV3 in its FID form: average pools that leave the padding
out of the mean, and a max pool in the last block's pool branch. FID reads
`pool_3` [N, 2048]; the Inception Score is softmax(pool_3 @ W) with the
graph's `softmax/weights` W [2048, 1008] and no bias. This module computes
exactly that: `tf1_resize_bilinear`, `InceptionV3` and `FeatureNetwork`
(compiled once, batches sharded over the device mesh).

Weights are a file the user supplies, local or gs://; nothing is downloaded.
Their layout is fidjax's (and jax-fid's), with torchvision's module names:

  {'Conv2d_1a_3x3': {'conv': {'kernel': [kh, kw, in, out]},
                     'bn': {'scale', 'bias', 'mean', 'var': [out]}},
   ..., 'Mixed_5b': {'branch1x1': {'conv': ..., 'bn': ...}, ...}, ...,
   'fc': {'kernel': [2048, 1008]}}

either pickled as that nested dict (fidjax's
`inception_v3_weights_fid.pickle` reads as it is) or as an .npz whose keys
are the '/'-joined paths (`Mixed_5b/branch1x1/conv/kernel`), which
`convert_graph_def` writes from the ADM evaluator's own graph file:

  python -m diffusion_distillation.inception \
      --graph_def=classify_image_graph_def.pb --out=inception_fid.npz
"""

import collections
import functools
import hashlib
import io
import pickle
import time
import zipfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from absl import logging

from diffusion_distillation import errors
from diffusion_distillation import files
from diffusion_distillation import sharding

INPUT_SIZE = 299  # the graph's ResizeBilinear target
POOL_DIM = 2048
NUM_LOGITS = 1008  # the 2015 graph's classes: ImageNet's 1000 and 8 unused
BN_EPSILON = 1e-3  # the graph's variance_epsilon
WEIGHTS_HELP = (
    "convert the ADM evaluator's classify_image_graph_def.pb with "
    '`python -m diffusion_distillation.inception --graph_def=PB '
    "--out=inception_fid.npz`, or use fidjax's "
    'inception_v3_weights_fid.pickle (docs/reproducing.md)'
)


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


def _to_module_params(params: dict) -> dict:
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


# ----------------------------------------------------------------------------
# Weight files.


def _flatten(tree: dict, prefix: str = '') -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}/'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def _unflatten(flat) -> dict:
  tree = {}
  for name, value in flat.items():
    *scopes, leaf = name.split('/')
    node = tree
    for scope in scopes:
      node = node.setdefault(scope, {})
    node[leaf] = value
  return tree


def save_params(params: dict, path: str):
  """Writes weights in the library's layout as .npz ('/'-joined keys)."""
  buffer = io.BytesIO()
  np.savez(buffer, **{k: np.asarray(v) for k, v in _flatten(params).items()})
  files.write_atomically(path, buffer.getvalue())


def load_params(path: str) -> dict:
  """Reads weights (.npz, or fidjax's pickle) and checks every array's
  name and shape; returns a nested dict of float32 NumPy arrays.

  Raises:
    errors.InputError naming the file and the first missing or misshapen
    array.
  """
  source = files.as_path(path)
  if not source.exists():
    raise errors.InputError(
        f'Inception weights {path} do not exist; {WEIGHTS_HELP}.'
    )
  raw = source.read_bytes()
  try:
    if zipfile.is_zipfile(io.BytesIO(raw)):
      with np.load(io.BytesIO(raw)) as npz:
        loaded = {k: npz[k] for k in npz.files}
    else:
      # A pickle runs code when read: read only weight files you trust.
      loaded = _flatten(pickle.loads(raw))
  except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
    raise errors.InputError(
        f'Cannot read Inception weights {path} as .npz or pickle '
        f'({type(e).__name__}: {e}); {WEIGHTS_HELP}.'
    ) from None
  params = {}
  for name, expected in _flatten(abstract_params()).items():
    if name not in loaded:
      raise errors.InputError(
          f'Inception weights {path} lack {name!r}; {WEIGHTS_HELP}.'
      )
    array = np.asarray(loaded[name], np.float32)
    if array.shape != expected.shape:
      raise errors.InputError(
          f'Inception weights {path}: {name!r} has shape {array.shape}, '
          f'expected {expected.shape}; {WEIGHTS_HELP}.'
      )
    params[name] = array
  return _unflatten(params)


def fingerprint(params: dict) -> str:
  """A short hash of the weights: names a cache computed with them."""
  digest = hashlib.sha256()
  for name, array in sorted(_flatten(params).items()):
    digest.update(name.encode())
    digest.update(np.ascontiguousarray(array, np.float32).tobytes())
  return digest.hexdigest()[:12]


# The graph's scopes (TF 2015-12-05) of each convolution in the library's
# layout: mixed..mixed_10 are Mixed_5b..Mixed_7c.
_TF_STEM = (
    ('Conv2d_1a_3x3', 'conv'),
    ('Conv2d_2a_3x3', 'conv_1'),
    ('Conv2d_2b_3x3', 'conv_2'),
    ('Conv2d_3b_1x1', 'conv_3'),
    ('Conv2d_4a_3x3', 'conv_4'),
)
_TF_BRANCHES = {
    'A': (
        ('branch1x1', 'conv'),
        ('branch5x5_1', 'tower/conv'),
        ('branch5x5_2', 'tower/conv_1'),
        ('branch3x3dbl_1', 'tower_1/conv'),
        ('branch3x3dbl_2', 'tower_1/conv_1'),
        ('branch3x3dbl_3', 'tower_1/conv_2'),
        ('branch_pool', 'tower_2/conv'),
    ),
    'B': (
        ('branch3x3', 'conv'),
        ('branch3x3dbl_1', 'tower/conv'),
        ('branch3x3dbl_2', 'tower/conv_1'),
        ('branch3x3dbl_3', 'tower/conv_2'),
    ),
    'C': (
        ('branch1x1', 'conv'),
        ('branch7x7_1', 'tower/conv'),
        ('branch7x7_2', 'tower/conv_1'),
        ('branch7x7_3', 'tower/conv_2'),
        ('branch7x7dbl_1', 'tower_1/conv'),
        ('branch7x7dbl_2', 'tower_1/conv_1'),
        ('branch7x7dbl_3', 'tower_1/conv_2'),
        ('branch7x7dbl_4', 'tower_1/conv_3'),
        ('branch7x7dbl_5', 'tower_1/conv_4'),
        ('branch_pool', 'tower_2/conv'),
    ),
    'D': (
        ('branch3x3_1', 'tower/conv'),
        ('branch3x3_2', 'tower/conv_1'),
        ('branch7x7x3_1', 'tower_1/conv'),
        ('branch7x7x3_2', 'tower_1/conv_1'),
        ('branch7x7x3_3', 'tower_1/conv_2'),
        ('branch7x7x3_4', 'tower_1/conv_3'),
    ),
    'E': (
        ('branch1x1', 'conv'),
        ('branch3x3_1', 'tower/conv'),
        ('branch3x3_2a', 'tower/mixed/conv'),
        ('branch3x3_2b', 'tower/mixed/conv_1'),
        ('branch3x3dbl_1', 'tower_1/conv'),
        ('branch3x3dbl_2', 'tower_1/conv_1'),
        ('branch3x3dbl_3a', 'tower_1/mixed/conv'),
        ('branch3x3dbl_3b', 'tower_1/mixed/conv_1'),
        ('branch_pool', 'tower_2/conv'),
    ),
}
_TF_BLOCKS = (
    ('Mixed_5b', 'mixed', 'A'),
    ('Mixed_5c', 'mixed_1', 'A'),
    ('Mixed_5d', 'mixed_2', 'A'),
    ('Mixed_6a', 'mixed_3', 'B'),
    ('Mixed_6b', 'mixed_4', 'C'),
    ('Mixed_6c', 'mixed_5', 'C'),
    ('Mixed_6d', 'mixed_6', 'C'),
    ('Mixed_6e', 'mixed_7', 'C'),
    ('Mixed_7a', 'mixed_8', 'D'),
    ('Mixed_7b', 'mixed_9', 'E'),
    ('Mixed_7c', 'mixed_10', 'E'),
)


def graph_scopes() -> dict:
  """{library path of a conv block ('Mixed_5b/branch1x1'): graph scope
  ('mixed/conv')}, for every convolution of the network."""
  scopes = dict(_TF_STEM)
  for block, tf_block, kind in _TF_BLOCKS:
    for branch, tf_branch in _TF_BRANCHES[kind]:
      scopes[f'{block}/{branch}'] = f'{tf_block}/{tf_branch}'
  return scopes


def convert_graph_def(graph_def_bytes: bytes) -> dict:
  """The FID graph (`classify_image_graph_def.pb`, serialised GraphDef) ->
  weights in the library's layout (float32 NumPy arrays).

  Batch norms are the graph's BatchNormWithGlobalNormalization ops: with
  scale_after_normalization false the graph ignores gamma, and so scale is
  1 here.

  Raises:
    errors.InputError when the graph is not the FID graph (a constant or
    op missing, another epsilon, another resize).
  """
  import tensorflow as tf

  graph_def = tf.compat.v1.GraphDef()
  try:
    graph_def.ParseFromString(graph_def_bytes)
  except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and kin
    raise errors.InputError(f'Not a TensorFlow GraphDef: {e}') from None
  nodes = {node.name: node for node in graph_def.node}

  def node(name, op=None):
    found = nodes.get(name)
    if found is None or (op and found.op != op):
      raise errors.InputError(
          f'The graph has no {op or "node"} {name!r}: not the 2015-12-05 '
          'Inception graph (classify_image_graph_def.pb) that the ADM '
          'evaluator uses.'
      )
    return found

  def const(name):
    return tf.make_ndarray(node(name, 'Const').attr['value'].tensor)

  for resize in (n for n in graph_def.node if n.op == 'ResizeBilinear'):
    if resize.attr['align_corners'].b or resize.attr['half_pixel_centers'].b:
      raise errors.InputError(
          f'The graph resizes with {resize.name} in another mode than TF1 '
          'bilinear (align_corners and half_pixel_centers false), which this '
          'module reproduces.'
      )
  params = {}
  for path, scope in graph_scopes().items():
    norm = node(f'{scope}/batchnorm', 'BatchNormWithGlobalNormalization')
    epsilon = norm.attr['variance_epsilon'].f
    if not np.isclose(epsilon, BN_EPSILON):
      raise errors.InputError(
          f'{scope}/batchnorm has epsilon {epsilon}, not {BN_EPSILON}.'
      )
    beta = const(f'{scope}/batchnorm/beta')
    scale = (
        const(f'{scope}/batchnorm/gamma')
        if norm.attr['scale_after_normalization'].b
        else np.ones_like(beta)
    )
    params[f'{path}/conv/kernel'] = const(f'{scope}/conv2d_params')
    params[f'{path}/bn/scale'] = scale
    params[f'{path}/bn/bias'] = beta
    params[f'{path}/bn/mean'] = const(f'{scope}/batchnorm/moving_mean')
    params[f'{path}/bn/var'] = const(f'{scope}/batchnorm/moving_variance')
  params['fc/kernel'] = const('softmax/weights')
  return _unflatten({k: np.asarray(v, np.float32) for k, v in params.items()})


# ----------------------------------------------------------------------------
# Features of many images on all devices.


class FeatureNetwork:
  """pool_3 features and logits of uint8 images, on every device of a mesh.

  One compiled function per batch shape; each batch is split over the
  mesh's devices. Results stay on the devices until a later batch has been
  dispatched, so the host never waits for one batch before sending the
  next (the only per-batch traffic is the images in and the features out).
  """

  def __init__(self, params: dict, mesh=None, *, input_size: int = INPUT_SIZE):
    """
    Args:
      params: weights in the library's layout (`load_params`).
      mesh: the 'data' mesh (default: all devices).
      input_size: the resize target; 299 is the graph's, smaller sizes
        only make tests and benchmarks cheaper.
    """
    self.mesh = mesh if mesh is not None else sharding.make_mesh()
    self.fingerprint = fingerprint(params)
    self._params = sharding.replicate(_to_module_params(params), self.mesh)
    model = InceptionV3()

    def apply(params, images):
      x = tf1_resize_bilinear(images.astype(jnp.float32), input_size)
      return model.apply({'params': params}, (x - 128.0) / 128.0)

    replicated = sharding.replicated(self.mesh)
    # Replicated outputs: every process reads all features (they are small).
    self._apply = jax.jit(
        apply,
        in_shardings=(replicated, sharding.sample_sharding(self.mesh)),
        out_shardings=(replicated, replicated),
    )

  def apply(self, images: jax.Array):
    """One batch already on the devices -> (pool [B, 2048], logits [B,
    1008]) on the devices, asynchronously."""
    return self._apply(self._params, images)

  def device_batch(self, images: np.ndarray) -> jax.Array:
    """uint8 [B, H, W, 3] on the host -> split over the mesh."""
    return sharding.global_array(images, sharding.sample_sharding(self.mesh))

  def __call__(
      self,
      images: np.ndarray,
      *,
      batch_size: int,
      progress: str | None = None,
      max_in_flight: int = 4,
  ) -> tuple[np.ndarray, np.ndarray]:
    """Features of uint8 images [N, H, W, 3] (values 0-255).

    Args:
      images: what the ADM evaluator reads from an npz's arr_0.
      batch_size: images per call, a multiple of the device count; the last
        batch is zero-padded to it (one compilation).
      progress: a name to log progress and ETA under, every 30 s.
      max_in_flight: batches dispatched ahead of the oldest one not yet
        copied back (bounds device memory).

    Returns:
      (pool_3 features [N, 2048], logits [N, 1008]), float32 NumPy arrays.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
      raise errors.InputError(
          'Inception features need uint8 RGB images [N, H, W, 3]; got '
          f'{images.dtype} {images.shape}.'
      )
    num = len(images)
    if num == 0:
      raise errors.InputError('No images to compute features of.')
    pending, done = collections.deque(), []
    start = last_log = time.time()
    for begin in range(0, num, batch_size):
      batch = images[begin : begin + batch_size]
      count = len(batch)
      if count < batch_size:
        batch = np.pad(batch, ((0, batch_size - count), (0, 0), (0, 0), (0, 0)))
      outputs = self.apply(self.device_batch(batch))
      for output in outputs:
        output.copy_to_host_async()
      pending.append((outputs, count))
      if len(pending) > max_in_flight:
        done.append(_to_host(*pending.popleft()))
      if progress and time.time() - last_log > 30:
        last_log = time.time()
        seen = begin + count
        rate = seen / (last_log - start)
        logging.info(
            '%s: %d/%d images, %.0f images/s, ETA %.0f s',
            progress,
            seen,
            num,
            rate,
            (num - seen) / rate,
        )
    done.extend(_to_host(*entry) for entry in pending)
    pool = np.concatenate([d[0] for d in done])
    logits = np.concatenate([d[1] for d in done])
    return pool, logits


def _to_host(outputs, count):
  return tuple(np.asarray(output)[:count] for output in outputs)


# ----------------------------------------------------------------------------
# Command: convert the graph.


def main(argv):
  del argv
  from diffusion_distillation import cli

  cli.quiet_start()
  graph_def, out = flags.FLAGS.graph_def, flags.FLAGS.out
  try:
    source = files.as_path(graph_def)
    if not source.exists():
      raise errors.InputError(f'--graph_def={graph_def} does not exist.')
    params = convert_graph_def(source.read_bytes())
    save_params(params, out)
  except errors.InputError as e:
    cli.exit_on_bad_input(e)
  print(f'Wrote {out} (fingerprint {fingerprint(params)}).')


if __name__ == '__main__':
  # Flags only when run as a command, so that importing defines none.
  flags.DEFINE_string(
      'graph_def',
      None,
      'classify_image_graph_def.pb, the graph the ADM evaluator runs (local '
      'or gs://).',
  )
  flags.DEFINE_string(
      'out', None, 'Where to write the weights (.npz, local or gs://).'
  )
  flags.mark_flags_as_required(['graph_def', 'out'])
  app.run(main)
