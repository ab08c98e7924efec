"""Training data streamed from tensorflow-datasets, preprocessed as the release.

  cifar10              32x32 as stored; random horizontal flip
  fashion_mnist        28x28x1 grayscale as stored; no flip (below)
  imagenet2012         central square crop on the long side, area resize to
                       dataset.image_size (64 in the paper), random flip;
                       int32 class labels
  lsun/bedroom,        central square crop, bilinear antialiased resize to
  lsun/church_outdoor  dataset.image_size (128 in the paper), random flip

Each process reads its own part of the train split
(`tfds.split_for_jax_process`), shuffles it through a 50,000-example buffer
(`dataset.shuffle_buffer`), repeats it forever and batches its share of the
global batch into [substeps, B_local, ...], as `datasets.batch_for_step` does
for the in-memory digits.

Resumption: a stream cannot jump to step s the way the digits batches can
(that would mean reading s batches to throw them away). Instead a stream is
built whenever the training loop asks for a step that does not follow the
previous one (its start, a resume, a new phase), seeded by
(config seed, that step, process index). A resumed run therefore continues
with a fresh random order of the data rather than replaying the order the
interrupted run would have read; parameters, optimizer state and random keys
still resume exactly. For a fixed seed and start step the stream is
deterministic: file order, shuffle and flips are all seeded.

Fashion-MNIST is not flipped, unlike the paper's datasets: its three
footwear classes (sandal, sneaker, ankle boot) face left in every image (the
class means differ from their mirror images by 58-99 % of their mean
intensity, every other class's by under 10 %). Flipped shoes would teach the
model images the data never holds, and the FD against the test set
(evaluation/) would count them against it. No other augmentation: the
paper used none but the flip.

The pipeline never downloads or prepares data (ImageNet must be downloaded by
hand, LSUN is tens of GB, and every host of a multi-host run would race to
write the same files): a dataset that is not prepared under dataset.data_dir
stops the run with the command that prepares it (`data/prepare.py`).
"""

import logging as logging_lib

import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from diffusion_distillation.data import datasets
from diffusion_distillation.data import prepare
from diffusion_distillation.utils import errors


def central_square_crop(image: tf.Tensor) -> tf.Tensor:
  """[H, W, C] -> [S, S, C], S = min(H, W), centred on the long side.

  The offset along the long side is L // 2 - S // 2, as in the release (it
  differs from (L - S) // 2 by one pixel when L is even and S odd).
  """
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  size = tf.minimum(height, width)
  return tf.image.crop_to_bounding_box(
      image, height // 2 - size // 2, width // 2 - size // 2, size, size
  )


def resize(image: tf.Tensor, size: int, method: str) -> tf.Tensor:
  """Square [S, S, C] -> float32 [size, size, C] in [0, 255].

  method: 'area' (ImageNet) or 'bilinear' (LSUN, antialiased).
  """
  resized = tf.image.resize(
      tf.cast(image, tf.float32),
      [size, size],
      method=method,
      antialias=method == 'bilinear',
  )
  return tf.clip_by_value(resized, 0.0, 255.0)


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Left-right flip with probability 1/2, decided by `seed` ([2] int)."""
  return tf.image.stateless_random_flip_left_right(image, seed)


# How the datasets stored at any size reach dataset.image_size (the
# release's choices); the others are used as stored.
RESIZE_METHODS = {
    'imagenet2012': 'area',
    'lsun/bedroom': 'bilinear',
    'lsun/church_outdoor': 'bilinear',
}


def decode_and_resize(example: dict, *, name: str, image_size: int):
  """One tfds example, image still encoded -> float32 [image_size,
  image_size, C] in [0, 255] (C: the dataset's channels), cropped and
  resized as the release did."""
  channels = datasets.TFDS_DATASETS[name].channels
  image = tf.io.decode_image(
      example['image'], channels=channels, expand_animations=False
  )
  if name in RESIZE_METHODS:
    return resize(central_square_crop(image), image_size, RESIZE_METHODS[name])
  return tf.cast(
      tf.ensure_shape(image, [image_size, image_size, channels]), tf.float32
  )


def preprocess(
    example: dict, seed: tf.Tensor, *, name: str, image_size: int
) -> dict:
  """One tfds example, image still encoded -> {'image': float32
  [image_size, image_size, C] in [0, 255], 'label': int32 (0 for datasets
  without labels)}.

  Images are decoded here, after the shuffle, so that the shuffle buffer
  holds compressed bytes as in the release (50,000 decoded ImageNet images
  would take tens of GB). The release decoded and cropped JPEGs in one op;
  here the image is decoded whole, then cropped (the same pixels up to JPEG
  decoder rounding at the crop edge), and flipped after resizing (flips
  commute with symmetric resize kernels), so every step is a pure function
  testable on decoded images.
  """
  image = decode_and_resize(example, name=name, image_size=image_size)
  label = (
      tf.cast(example['label'], tf.int32)
      if 'label' in example
      else (tf.zeros((), tf.int32))
  )
  if datasets.TFDS_DATASETS[name].random_flip:
    image = random_flip(image, seed)
  return {'image': image, 'label': label}


def _not_prepared_message(dataset: ml_collections.ConfigDict, builder) -> str:
  where = (
      f'Dataset {dataset.name} is not prepared in {builder.data_dir} '
      '(set dataset.data_dir to where it is)'
  )
  command = prepare.prepare_command(dataset.name, dataset.data_dir)
  if dataset.name == 'imagenet2012':
    manual_dir = dataset.get('manual_dir') or '<dir>'
    return (
        f'{where}. Download ILSVRC2012_img_train.tar and '
        'ILSVRC2012_img_val.tar from https://image-net.org (registration '
        f'needed), place them in {manual_dir} and run: {command} '
        f'--manual_dir={manual_dir}'
    )
  if dataset.name == 'fashion_mnist':
    return (
        f'{where}. Prepare it offline with: {prepare.APT_FASHION_MNIST} && '
        f'{command}'
    )
  return f'{where}. Prepare it with: {command}'


def _read_split(dataset: ml_collections.ConfigDict, builder, **as_dataset):
  """builder.as_dataset(split, ...), or InputError with the command that
  prepares the data when it is not prepared under dataset.data_dir."""
  try:
    return builder.as_dataset(
        decoders={'image': tfds.decode.SkipDecoding()}, **as_dataset
    )
  except AssertionError:  # what tfds raises when the files are missing
    if builder.is_prepared():
      raise
    raise errors.InputError(_not_prepared_message(dataset, builder)) from None


def _not_a_missing_variant_warning(record: logging_lib.LogRecord) -> bool:
  # tfds warns that a version folder lacks its dataset_info.json on its way
  # to failing, which check_prepared reports in one line itself.
  return not record.getMessage().startswith('Variant folder ')


def check_prepared(dataset: ml_collections.ConfigDict):
  """Raises InputError, naming the `tfds build` command, when the train
  split cannot be read (it reads no example)."""
  absl_logger = logging.get_absl_logger()
  absl_logger.addFilter(_not_a_missing_variant_warning)
  try:
    builder = tfds.builder(dataset.name, data_dir=dataset.data_dir or None)
    _read_split(dataset, builder, split='train')
  finally:
    absl_logger.removeFilter(_not_a_missing_variant_warning)


def reference_images(
    dataset: ml_collections.ConfigDict, num_images: int, batch_size: int = 256
) -> np.ndarray:
  """The first `num_images` images of the train split in file order, cropped
  and resized as for training but not flipped, rounded to uint8 [N, S, S,
  3]: the real images FID is measured against. Every process reads the same
  images. (tfds writes a split's examples shuffled, so a prefix of ImageNet
  is a fixed random subset.)

  Raises:
    errors.InputError when the split holds fewer images.
  """
  builder = tfds.builder(dataset.name, data_dir=dataset.data_dir or None)
  ds = _read_split(dataset, builder, split='train', shuffle_files=False)
  ds = ds.take(num_images).map(
      lambda example: decode_and_resize(
          example, name=dataset.name, image_size=dataset.image_size
      ),
      num_parallel_calls=tf.data.AUTOTUNE,
  )
  options = tf.data.Options()
  options.deterministic = True
  ds = ds.with_options(options).batch(batch_size).prefetch(tf.data.AUTOTUNE)
  images = [
      np.round(np.clip(batch, 0, 255)).astype(np.uint8)
      for batch in ds.as_numpy_iterator()
  ]
  count = sum(len(batch) for batch in images)
  if count < num_images:
    raise errors.InputError(
        f'The {dataset.name} train split holds {count} images, fewer than '
        f'eval.reference_num_images={num_images}; set it to at most {count}.'
    )
  return np.concatenate(images)


def load_split(
    name: str, split: str, *, data_dir: str = ''
) -> datasets.Dataset:
  """A whole split of a dataset stored at its size (Fashion-MNIST, CIFAR-10)
  in memory, in file order: images [N, S, S, C] in [-1, 1], labels [N].

  For the datasets small enough to hold (Fashion-MNIST's 60,000 train images
  take 188 MB as float32): a reference classifier's training data and the
  test images samples are compared with (evaluation/reference_network.py).

  Raises:
    errors.InputError with the command that prepares the data when it is
    not prepared under `data_dir`.
  """
  info = datasets.TFDS_DATASETS[name]
  dataset = ml_collections.ConfigDict(dict(name=name, data_dir=data_dir))
  builder = tfds.builder(name, data_dir=data_dir or None)
  ds = _read_split(dataset, builder, split=split, shuffle_files=False)
  ds = ds.map(
      lambda example: {
          'image': decode_and_resize(
              example, name=name, image_size=info.image_size
          ),
          'label': tf.cast(example['label'], tf.int32),
      },
      num_parallel_calls=tf.data.AUTOTUNE,
  )
  options = tf.data.Options()
  options.deterministic = True
  ds = ds.with_options(options).batch(10_000).prefetch(tf.data.AUTOTUNE)
  batches = list(ds.as_numpy_iterator())
  return datasets.Dataset(
      images=datasets.uint8_to_unit_interval(
          np.concatenate([b['image'] for b in batches])
      ),
      labels=np.concatenate([b['label'] for b in batches]),
  )


def stream_seeds(seed: int, step: int, process_index: int) -> tuple:
  """(file order seed, shuffle-and-flip seed) of a stream starting at `step`."""
  file_seed, shuffle_seed = np.random.SeedSequence(
      [seed, step, process_index]
  ).generate_state(2)
  return int(file_seed), int(shuffle_seed)


def train_dataset(
    dataset: ml_collections.ConfigDict,
    *,
    seed: int,
    step: int,
    batch_size: int,
    substeps: int,
    process_index: int = 0,
    process_count: int = 1,
) -> tf.data.Dataset:
  """This process's endless stream of [substeps, B_local, ...] batches.

  Args:
    dataset: config.dataset (name, image_size, data_dir, shuffle_buffer,
      and manual_dir for ImageNet).
    seed: the config's seed.
    step: optimizer step the stream starts at (seeds the order, see above).
    batch_size: the global batch; this process gets batch_size / process_count.
    substeps: optimizer steps per batch.
    process_index, process_count: this process and how many read in all.

  Returns:
    A tf.data.Dataset of {'image': float32 [substeps, B_local, H, W, C] in
    [0, 255], 'label': int32 [substeps, B_local]}.

  Raises:
    InputError when the dataset is not prepared under dataset.data_dir.
  """
  builder = tfds.builder(dataset.name, data_dir=dataset.data_dir or None)
  file_seed, shuffle_seed = stream_seeds(seed, step, process_index)
  split = tfds.split_for_jax_process(
      'train', process_index=process_index, process_count=process_count
  )
  ds = _read_split(
      dataset,
      builder,
      split=split,
      shuffle_files=True,
      read_config=tfds.ReadConfig(shuffle_seed=file_seed),
  )
  options = tf.data.Options()
  options.deterministic = True  # a seed fixes the order, parallel map or not
  ds = ds.with_options(options)
  ds = ds.shuffle(dataset.shuffle_buffer, seed=shuffle_seed).repeat()
  # Each example's flip is seeded by its position in the stream.
  ds = ds.enumerate().map(
      lambda index, example: preprocess(
          example,
          tf.stack([tf.constant(shuffle_seed, tf.int64), index]),
          name=dataset.name,
          image_size=dataset.image_size,
      ),
      num_parallel_calls=tf.data.AUTOTUNE,
  )
  ds = ds.batch(batch_size // process_count, drop_remainder=True)
  ds = ds.batch(substeps, drop_remainder=True)
  return ds.prefetch(tf.data.AUTOTUNE)


class TfdsStream:
  """Batches of a tfds dataset, asked for step by step like the digits'.

  `batch_for_step` takes the arguments of `datasets.batch_for_step`; asked for
  the step that follows the previous call it continues the current stream,
  otherwise it builds a new one seeded by that step (module docstring).
  """

  def __init__(self, dataset: ml_collections.ConfigDict):
    self._dataset = dataset
    self._iterator = None
    self._next: tuple | None = None  # (arguments, step) that continues

  def batch_for_step(
      self,
      *,
      seed: int,
      step: int,
      batch_size: int,
      substeps: int = 1,
      process_index: int = 0,
      process_count: int = 1,
  ):
    """(images [substeps, B_local, H, W, C] float32 in [-1, 1],
    labels [substeps, B_local] int32) for optimizer steps
    [step, step + substeps)."""
    arguments = (seed, batch_size, substeps, process_index, process_count)
    if self._next != (arguments, step):
      self._iterator = train_dataset(
          self._dataset,
          seed=seed,
          step=step,
          batch_size=batch_size,
          substeps=substeps,
          process_index=process_index,
          process_count=process_count,
      ).as_numpy_iterator()
    batch = next(self._iterator)
    self._next = (arguments, step + substeps)
    return datasets.uint8_to_unit_interval(batch['image']), batch['label']
