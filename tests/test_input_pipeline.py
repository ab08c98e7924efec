"""The tfds input pipelines under `tfds.testing.mock_data`: batch layout,
value range, determinism, per-process splits, the preprocessing functions on
known images, and the error for a dataset that is not prepared."""

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from diffusion_distillation.data import input_pipeline
from diffusion_distillation.runs import config_checks
from diffusion_distillation.utils import errors
from tests.helpers import tiny_config

# name -> (image_size, number of classes (0 = no labels), channels)
DATASETS = {
    'cifar10': (32, 10, 3),
    'fashion_mnist': (28, 10, 1),
    'imagenet2012': (64, 1000, 3),
    'lsun/bedroom': (128, 0, 3),
    'lsun/church_outdoor': (128, 0, 3),
}


_PREPARE = 'python -m diffusion_distillation.data.prepare'


def _dataset_config(name, **overrides):
  return ml_collections.ConfigDict(
      dict(
          dict(
              name=name,
              image_size=DATASETS[name][0],
              data_dir='',
              shuffle_buffer=64,
          ),
          **overrides,
      )
  )


def _batch(stream, step=0, **kwargs):
  where = dict(seed=0, step=step, batch_size=4, substeps=2)
  return stream.batch_for_step(**dict(where, **kwargs))


@pytest.mark.parametrize('name', sorted(DATASETS))
def test_batches_have_the_in_memory_layout(name):
  size, num_classes, channels = DATASETS[name]
  with tfds.testing.mock_data(num_examples=16):
    images, labels = _batch(
        input_pipeline.TfdsStream(_dataset_config(name)),
        batch_size=8,
        process_index=1,
        process_count=2,
    )
  assert images.shape == (2, 4, size, size, channels)  # [K, B_local, ...]
  assert images.dtype == np.float32
  assert -1.0 <= images.min() < 0.0 < images.max() <= 1.0
  assert labels.shape == (2, 4) and labels.dtype == np.int32
  if num_classes:
    assert 0 <= labels.min() and labels.max() < num_classes
    assert len(np.unique(labels)) > 1
  else:
    np.testing.assert_array_equal(labels, 0)


def test_a_seed_and_start_step_fix_the_stream():
  config = _dataset_config('cifar10')
  with tfds.testing.mock_data(num_examples=16):
    first = input_pipeline.TfdsStream(config)
    again = input_pipeline.TfdsStream(config)
    a0, b0 = _batch(first, 0), _batch(again, 0)
    np.testing.assert_array_equal(a0[0], b0[0])
    np.testing.assert_array_equal(a0[1], b0[1])
    # Consecutive steps continue one stream: the next batch is new data.
    a2 = _batch(first, 2)
    np.testing.assert_array_equal(a2[0], _batch(again, 2)[0])
    assert not np.array_equal(a2[0], a0[0])
    # Another seed, or a stream started at another step (a resume), is
    # another random order.
    other_seed = _batch(input_pipeline.TfdsStream(config), 0, seed=1)
    assert not np.array_equal(other_seed[0], a0[0])
    resumed = _batch(input_pipeline.TfdsStream(config), 2)
    assert not np.array_equal(resumed[0], a2[0])


def test_a_step_out_of_sequence_starts_a_new_stream(monkeypatch):
  built = []
  original = input_pipeline.train_dataset

  def counting(*args, **kwargs):
    built.append(kwargs['step'])
    return original(*args, **kwargs)

  monkeypatch.setattr(input_pipeline, 'train_dataset', counting)
  stream = input_pipeline.TfdsStream(_dataset_config('cifar10'))
  with tfds.testing.mock_data(num_examples=16):
    for step in (0, 2, 4, 10, 12):
      _batch(stream, step)
  assert built == [0, 10]


def test_each_process_reads_its_own_split_and_order():
  """mock_data serves the same examples for any split, so each split gets
  images of its own constant value here."""
  splits = []

  def as_dataset(self, split, **kwargs):
    del self, kwargs
    splits.append(split)
    value = 10 * (split.index + 1)
    return tf.data.Dataset.range(16).map(
        lambda i: {  # encoded, as stored
            'image': tf.io.encode_png(
                tf.fill([32, 32, 3], tf.cast(value + i, tf.uint8))
            ),
            'label': i,
        }
    )

  config = _dataset_config('cifar10')
  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    batches = [
        _batch(
            input_pipeline.TfdsStream(config),
            batch_size=8,
            process_index=i,
            process_count=2,
        )
        for i in range(2)
    ]
  assert splits == [
      tfds.split_for_jax_process('train', process_index=i, process_count=2)
      for i in range(2)
  ]
  pixels = [np.round((images + 1) * 127.5) for images, _ in batches]
  assert 10 <= pixels[0].min() and pixels[0].max() < 26
  assert 20 <= pixels[1].min() and pixels[1].max() < 36
  orders = [labels.ravel() for _, labels in batches]
  assert not np.array_equal(orders[0], orders[1])  # seeded by process index


@pytest.mark.parametrize('name', ['cifar10', 'fashion_mnist', 'imagenet2012'])
def test_reference_images_are_the_split_in_order_unflipped(name):
  size, _, channels = DATASETS[name]
  config = _dataset_config(name)
  with tfds.testing.mock_data(num_examples=12):
    images = input_pipeline.reference_images(config, 10, batch_size=4)
    again = input_pipeline.reference_images(config, 10, batch_size=8)
    first = next(
        iter(tfds.load(name, split='train', shuffle_files=False).take(1))
    )
    with pytest.raises(errors.InputError, match='holds 12 images, fewer than'):
      input_pipeline.reference_images(config, 13)
  assert images.shape == (10, size, size, channels)
  assert images.dtype == np.uint8
  np.testing.assert_array_equal(images, again)
  if name != 'imagenet2012':  # stored at its size: the pixels as they are
    np.testing.assert_array_equal(images[0], first['image'].numpy())


def test_central_square_crop_on_non_square_images():
  tall = tf.reshape(tf.range(6 * 3), [6, 3, 1])
  # Long side 6, short 3: rows from 6 // 2 - 3 // 2 = 2, as the release.
  np.testing.assert_array_equal(
      input_pipeline.central_square_crop(tall), tall[2:5]
  )
  wide = tf.reshape(tf.range(3 * 8), [3, 8, 1])
  np.testing.assert_array_equal(
      input_pipeline.central_square_crop(wide), wide[:, 3:6]
  )
  square = tf.reshape(tf.range(4 * 4), [4, 4, 1])
  np.testing.assert_array_equal(
      input_pipeline.central_square_crop(square), square
  )


def test_resize_area_averages_blocks_and_bilinear_keeps_flat_regions():
  blocks = np.kron(
      np.array([[0, 100], [200, 255]], np.uint8), np.ones((4, 4), np.uint8)
  )[..., None]
  area = input_pipeline.resize(tf.constant(blocks), 2, 'area')
  assert area.dtype == tf.float32
  np.testing.assert_allclose(area[..., 0], [[0, 100], [200, 255]])
  quarter = input_pipeline.resize(
      tf.constant(
          np.kron(
              np.array([[0, 255], [255, 0]], np.uint8),
              np.ones((2, 2), np.uint8),
          )[..., None]
      ),
      1,
      'area',
  )
  np.testing.assert_allclose(quarter, [[[127.5]]])
  flat = np.full((12, 12, 3), 77, np.uint8)
  bilinear = input_pipeline.resize(tf.constant(flat), 5, 'bilinear')
  assert bilinear.shape == (5, 5, 3)
  np.testing.assert_allclose(bilinear, 77.0, atol=1e-3)
  # Antialiasing bounds the overshoot; the clip keeps [0, 255] regardless.
  edges = np.kron(np.array([[0, 255]] * 2, np.uint8), np.ones((8, 8), np.uint8))
  sharp = input_pipeline.resize(tf.constant(edges[..., None]), 5, 'bilinear')
  assert 0.0 <= float(tf.reduce_min(sharp))
  assert float(tf.reduce_max(sharp)) <= 255.0


def test_random_flip_is_seeded_and_flips_about_half():
  image = tf.reshape(tf.range(2 * 3, dtype=tf.float32), [2, 3, 1])
  flipped = []
  for index in range(400):
    seed = tf.constant([7, index], tf.int64)
    out = input_pipeline.random_flip(image, seed)
    np.testing.assert_array_equal(out, input_pipeline.random_flip(image, seed))
    if np.array_equal(out, image[:, ::-1]):
      flipped.append(index)
    else:
      np.testing.assert_array_equal(out, image)
  assert 160 < len(flipped) < 240


@pytest.mark.parametrize('name', ['cifar10', 'fashion_mnist'])
def test_only_the_datasets_without_a_handedness_are_flipped(name):
  size, _, channels = DATASETS[name]
  ramp = np.tile(np.arange(size, dtype=np.uint8), (size, 1))  # left dark
  image = np.repeat(ramp[..., None], channels, axis=-1)
  example = {'image': tf.io.encode_png(image), 'label': tf.constant(3)}
  flips = 0
  for index in range(40):
    out = input_pipeline.preprocess(
        example, tf.constant([7, index], tf.int64), name=name, image_size=size
    )
    assert out['image'].shape == (size, size, channels)
    flips += not np.array_equal(out['image'].numpy(), image)
  # cifar10 flips about half; Fashion-MNIST's shoes all face left: never.
  assert (flips > 5) if name == 'cifar10' else flips == 0


@pytest.mark.parametrize(
    'name,expected',
    [
        ('cifar10', f'Prepare it with: {_PREPARE} cifar10 --data_dir={{}}'),
        (
            'fashion_mnist',
            (
                'Prepare it offline with: apt-get install '
                f'dataset-fashion-mnist && {_PREPARE} fashion_mnist '
                '--data_dir={}'
            ),
        ),
        ('lsun/bedroom', f'{_PREPARE} lsun/bedroom --data_dir={{}}'),
        (
            'imagenet2012',
            (
                f'place them in /tars and run: {_PREPARE} imagenet2012 '
                '--data_dir={} --manual_dir=/tars'
            ),
        ),
    ],
)
def test_a_dataset_that_is_not_prepared_names_the_command(
    name, expected, tmp_path
):
  overrides = {'manual_dir': '/tars'} if name == 'imagenet2012' else {}
  config = _dataset_config(name, data_dir=str(tmp_path), **overrides)
  with pytest.raises(errors.InputError) as error:
    _batch(input_pipeline.TfdsStream(config))
  message = str(error.value)
  assert message.startswith(f'Dataset {name} is not prepared in {tmp_path}/')
  assert message.endswith(expected.format(tmp_path))
  assert '\n' not in message


@pytest.mark.parametrize(
    'overrides,message',
    [
        ({'dataset.name': 'cifar100'}, "Unknown dataset.name 'cifar100'"),
        (
            {
                'dataset.name': 'cifar10',
                'dataset.image_size': 64,
                'dataset.channels': 3,
            },
            'cifar10 images are 32x32; set it to 32',
        ),
        (
            {'dataset.name': 'cifar10', 'dataset.image_size': 32},
            'cifar10 images are RGB; set it to 3',
        ),
        (
            {
                'dataset.name': 'fashion_mnist',
                'dataset.image_size': 28,
                'dataset.channels': 3,
            },
            'fashion_mnist images are grayscale; set it to 1',
        ),
        (
            {
                'dataset.name': 'imagenet2012',
                'dataset.channels': 3,
                'dataset.num_classes': 10,
            },
            'imagenet2012 has 1000 classes',
        ),
        (
            {'dataset.name': 'lsun/bedroom', 'dataset.channels': 3},
            'lsun/bedroom has no labels; set dataset.class_conditional=False',
        ),
    ],
)
def test_dataset_fields_that_do_not_fit_are_refused(overrides, message):
  with pytest.raises(errors.InputError, match=message):
    config_checks.check_config(tiny_config(**overrides))
