"""InceptionV3 weights from the FID graph itself: the ADM evaluator's
`classify_image_graph_def.pb` (TensorFlow, 2015-12-05) read into the
library's layout (inception_weights.py). TensorFlow is imported only here,
and only when a graph is converted."""

import numpy as np

from diffusion_distillation.evaluation import inception_net
from diffusion_distillation.evaluation import inception_weights
from diffusion_distillation.utils import errors

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
    if not np.isclose(epsilon, inception_net.BN_EPSILON):
      raise errors.InputError(
          f'{scope}/batchnorm has epsilon {epsilon}, not'
          f' {inception_net.BN_EPSILON}.'
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
  return inception_weights.unflatten(
      {k: np.asarray(v, np.float32) for k, v in params.items()}
  )
