"""The FID graph's InceptionV3: its preprocessing against TensorFlow's own
ops, weight files (fidjax's pickle, .npz, the graph) and their refusals,
and the features: shapes, determinism, batch-size and device-count
independence."""

import json
import pickle
import re

import numpy as np
import pytest
import tensorflow as tf

from diffusion_distillation.evaluation import inception
from diffusion_distillation.evaluation import inception_net
from diffusion_distillation.utils import errors
from tests.helpers import TWO_CPU_DEVICES
from tests.helpers import run_python


@pytest.fixture(scope='module')
def params():
  return inception.random_params(0)


@pytest.fixture(scope='module')
def network(params):
  # 75x75, the smallest input InceptionV3 takes, keeps CPU tests fast; the
  # graph's 299 is used where the size matters.
  return inception.FeatureNetwork(params, input_size=75)


def _images(count, size=32, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize('in_size', [8, 32, 64, 299, 512])
def test_resize_equals_tensorflow_1_resize_bilinear(in_size):
  rng = np.random.default_rng(in_size)
  images = rng.uniform(0, 255, (2, in_size, in_size + 3, 3)).astype(np.float32)
  expected = tf.raw_ops.ResizeBilinear(
      images=images,
      size=[inception.INPUT_SIZE, inception.INPUT_SIZE],
      align_corners=False,
      half_pixel_centers=False,
  ).numpy()
  got = np.asarray(inception.tf1_resize_bilinear(images, inception.INPUT_SIZE))
  np.testing.assert_allclose(got, expected, rtol=0, atol=2e-4)


def test_average_pool_leaves_padding_out_as_tensorflow():
  x = np.random.default_rng(0).normal(size=(2, 7, 7, 5)).astype(np.float32)
  expected = tf.nn.avg_pool2d(x, 3, 1, 'SAME').numpy()
  np.testing.assert_allclose(
      np.asarray(inception_net._avg_pool(x)), expected, rtol=1e-6, atol=1e-6
  )


def test_features_shapes_and_determinism(params, network):
  images = _images(6)
  pool, logits = network(images, batch_size=4)
  assert pool.shape == (6, inception.POOL_DIM)
  assert logits.shape == (6, inception.NUM_LOGITS)
  assert pool.dtype == logits.dtype == np.float32
  assert np.all(np.isfinite(pool)) and np.all(pool >= 0)  # after ReLUs
  assert np.std(pool) > 0 and np.std(logits) > 0
  fresh = inception.FeatureNetwork(params, input_size=75)
  again = fresh(images, batch_size=4)
  np.testing.assert_array_equal(pool, again[0])
  np.testing.assert_array_equal(logits, again[1])
  fresh(images[:5], batch_size=4)
  assert fresh._apply._cache_size() == 1  # padded last batches: one compile


def test_features_do_not_depend_on_the_batch_size(network):
  images = _images(7)
  pool_a, logits_a = network(images, batch_size=7)
  pool_b, logits_b = network(images, batch_size=3)  # padded last batch
  np.testing.assert_allclose(pool_a, pool_b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(logits_a, logits_b, rtol=1e-5, atol=1e-6)


def test_graph_input_size_gives_the_graph_shapes(params):
  pool, logits = inception.FeatureNetwork(params)(_images(2), batch_size=2)
  assert pool.shape == (2, 2048) and logits.shape == (2, 1008)


def test_logits_are_pool_times_the_softmax_weights_without_bias(
    params, network
):
  pool, logits = network(_images(3), batch_size=3)
  np.testing.assert_allclose(
      logits, pool @ params['fc']['kernel'], rtol=1e-4, atol=1e-5
  )


def test_fidjax_pickle_and_npz_load_to_the_same_weights(params, tmp_path):
  # fidjax's file: the nested dict pickled, with fc's bias, which the ADM
  # Inception Score leaves out.
  tree = {k: v for k, v in params.items() if k != 'fc'}
  tree['fc'] = {'kernel': params['fc']['kernel'], 'bias': np.zeros(1008)}
  pickled = tmp_path / 'inception_v3_weights_fid.pickle'
  pickled.write_bytes(pickle.dumps(tree))
  npz = tmp_path / 'inception_fid.npz'
  inception.save_params(params, str(npz))
  from_pickle = inception.load_params(str(pickled))
  from_npz = inception.load_params(str(npz))
  assert inception.fingerprint(from_pickle) == inception.fingerprint(params)
  assert inception.fingerprint(from_npz) == inception.fingerprint(params)


@pytest.mark.parametrize(
    'change,message',
    [
        (
            lambda p: p['Mixed_6b'].pop('branch7x7_2'),
            "lack 'Mixed_6b/branch7x7",
        ),
        (
            lambda p: p['fc'].update(kernel=np.zeros((2048, 1000))),
            "'fc/kernel' has shape (2048, 1000), expected (2048, 1008)",
        ),
    ],
)
def test_incomplete_weights_are_refused_by_name(
    params, tmp_path, change, message
):
  tree = pickle.loads(pickle.dumps(params))
  change(tree)
  path = tmp_path / 'w.pickle'
  path.write_bytes(pickle.dumps(tree))
  with pytest.raises(errors.InputError, match=re.escape(message)):
    inception.load_params(str(path))


def test_missing_or_unreadable_weights_are_refused(tmp_path):
  with pytest.raises(errors.InputError, match='do not exist; convert'):
    inception.load_params(str(tmp_path / 'nothing.npz'))
  (tmp_path / 'junk').write_bytes(b'not weights')
  with pytest.raises(errors.InputError, match='Cannot read Inception weights'):
    inception.load_params(str(tmp_path / 'junk'))


def _graph_def(params, *, scale_after_normalization):
  """A GraphDef with the FID graph's constants and batch-norm ops."""
  graph = tf.compat.v1.GraphDef()

  def const(name, value):
    node = graph.node.add(name=name, op='Const')
    node.attr['value'].tensor.CopyFrom(tf.make_tensor_proto(value))

  for path, scope in inception.graph_scopes().items():
    block = params
    for key in path.split('/'):
      block = block[key]
    const(f'{scope}/conv2d_params', block['conv']['kernel'])
    const(f'{scope}/batchnorm/beta', block['bn']['bias'])
    const(f'{scope}/batchnorm/gamma', block['bn']['scale'])
    const(f'{scope}/batchnorm/moving_mean', block['bn']['mean'])
    const(f'{scope}/batchnorm/moving_variance', block['bn']['var'])
    norm = graph.node.add(
        name=f'{scope}/batchnorm', op='BatchNormWithGlobalNormalization'
    )
    norm.attr['variance_epsilon'].f = 0.001
    norm.attr['scale_after_normalization'].b = scale_after_normalization
  const('softmax/weights', params['fc']['kernel'])
  const('softmax/biases', np.zeros(1008, np.float32))
  resize = graph.node.add(name='ResizeBilinear', op='ResizeBilinear')
  resize.attr['align_corners'].b = False
  return graph


def test_graph_def_converts_to_the_same_weights(params, tmp_path):
  graph = _graph_def(params, scale_after_normalization=True)
  converted = inception.convert_graph_def(graph.SerializeToString())
  assert inception.fingerprint(converted) == inception.fingerprint(params)
  # Without scale_after_normalization the graph ignores gamma.
  graph = _graph_def(params, scale_after_normalization=False)
  converted = inception.convert_graph_def(graph.SerializeToString())
  np.testing.assert_array_equal(
      converted['Mixed_5b']['branch1x1']['bn']['scale'], 1.0
  )
  np.testing.assert_array_equal(
      converted['Mixed_7c']['branch_pool']['conv']['kernel'],
      params['Mixed_7c']['branch_pool']['conv']['kernel'],
  )


def test_graph_without_the_fid_layers_is_refused(params):
  graph = _graph_def(params, scale_after_normalization=True)
  del graph.node[-3:]  # softmax/weights, softmax/biases, ResizeBilinear
  with pytest.raises(errors.InputError, match="no Const 'softmax/weights'"):
    inception.convert_graph_def(graph.SerializeToString())


@pytest.mark.slow
def test_convert_command_writes_loadable_weights(params, tmp_path):
  pb = tmp_path / 'classify_image_graph_def.pb'
  graph = _graph_def(params, scale_after_normalization=True)
  pb.write_bytes(graph.SerializeToString())
  out = tmp_path / 'inception_fid.npz'
  result = run_python([
      '-m',
      'diffusion_distillation.evaluation.inception',
      f'--graph_def={pb}',
      f'--out={out}',
  ])
  assert result.returncode == 0, result.stderr[-3000:]
  fingerprint = inception.fingerprint(inception.load_params(str(out)))
  assert fingerprint == inception.fingerprint(params)
  assert fingerprint in result.stdout
  missing = run_python([
      '-m',
      'diffusion_distillation.evaluation.inception',
      f'--graph_def={tmp_path / "none.pb"}',
      f'--out={out}',
  ])
  assert missing.returncode == 2
  assert missing.stderr.strip().splitlines()[-1].startswith('error: ')


_TWO_DEVICES = """
import json, sys
import jax, numpy as np
from diffusion_distillation.evaluation import inception
from diffusion_distillation.utils import sharding
params = inception.random_params(0)
images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), np.uint8)
out = {}
for name, devices in (('one', jax.devices()[:1]), ('two', jax.devices()[:2])):
  network = inception.FeatureNetwork(
      params, sharding.make_mesh(devices), input_size=75)
  out[name] = network(images, batch_size=4)
diff = max(float(np.max(np.abs(a - b))) for a, b in zip(out['one'], out['two']))
print(json.dumps({'devices': jax.device_count(), 'max_diff': diff,
                  'max_abs': float(np.max(np.abs(out['one'][0])))}))
"""


@pytest.mark.slow
def test_two_devices_give_the_features_of_one(tmp_path):
  result = run_python(
      ['-c', _TWO_DEVICES],
      env=TWO_CPU_DEVICES,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report['devices'] == 2 and report['max_abs'] > 0
  assert report['max_diff'] <= 1e-5 * report['max_abs'], report
