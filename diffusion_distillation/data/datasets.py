"""Training data: scikit-learn's bundled 8x8 digits, batched by step.

Each batch is a pure function of (seed, step), so a resumed run reads exactly
the batches an uninterrupted run would, with no iterator state to save.
Images are scaled to [-1, 1] here and only here (the tfds datasets of
`input_pipeline` call `uint8_to_unit_interval` too).
"""

from typing import NamedTuple

import numpy as np


class Dataset(NamedTuple):
  """Whole dataset in memory.

  images: [N, H, W, C] float32 in [-1, 1]; labels: [N] int32.
  """

  images: np.ndarray
  labels: np.ndarray

  @property
  def image_shape(self):
    return self.images.shape[1:]


def uint8_to_unit_interval(pixels):
  """Pixel values in [0, 255] (uint8, or float after resizing) -> float32 in
  [-1, 1]."""
  return np.asarray(pixels, np.float32) / 127.5 - 1.0


def unit_interval_to_uint8(x):
  """[-1, 1] -> uint8 by clipping and rounding (the release truncated)."""
  return np.round(np.clip((np.asarray(x) + 1.0) * 127.5, 0, 255)).astype(
      np.uint8
  )


def load_digits(
    split: str = 'train', *, test_fraction: float = 0.2, split_seed: int = 0
) -> Dataset:
  """scikit-learn's 1,797 8x8 handwritten digits (values 0-16), offline.

  Args:
    split: 'train', 'test' (a fixed held-out fraction) or 'all'.
    test_fraction: share of images, per class, held out for 'test'.
    split_seed: seed of the fixed train/test partition.

  Returns:
    Dataset with images [N, 8, 8, 1] in [-1, 1] and labels [N] in 0..9.
  """
  from sklearn import datasets

  digits = datasets.load_digits()
  images = (digits.images / 16.0 * 255.0)[..., None]
  labels = digits.target.astype(np.int32)
  if split != 'all':
    if split not in ('train', 'test'):
      raise ValueError(
          f"Unknown digits split {split!r}; use 'train', 'test' or 'all'."
      )
    rng = np.random.default_rng(split_seed)
    is_test = np.zeros(len(labels), bool)
    for label in range(10):
      members = np.flatnonzero(labels == label)
      held_out = rng.choice(
          members, int(round(test_fraction * len(members))), replace=False
      )
      is_test[held_out] = True
    keep = is_test if split == 'test' else ~is_test
    images, labels = images[keep], labels[keep]
  return Dataset(images=uint8_to_unit_interval(images), labels=labels)


IN_MEMORY_DATASETS = ('digits',)


class TfdsDataset(NamedTuple):
  """What the pipeline and the config checks know of a tfds dataset.

  image_size: the stored size, or None when the pipeline crops and resizes
    to dataset.image_size.
  num_classes: 0 when the dataset has no labels.
  channels: 3 (RGB) or 1 (grayscale).
  random_flip: whether training flips images left-right (input_pipeline.py
    says why Fashion-MNIST is not flipped).
  """

  image_size: int | None
  num_classes: int
  channels: int
  random_flip: bool


# The tfds datasets that `input_pipeline` streams.
TFDS_DATASETS = {
    'cifar10': TfdsDataset(32, 10, 3, True),
    'fashion_mnist': TfdsDataset(28, 10, 1, False),
    'imagenet2012': TfdsDataset(None, 1000, 3, True),
    'lsun/bedroom': TfdsDataset(None, 0, 3, True),
    'lsun/church_outdoor': TfdsDataset(None, 0, 3, True),
}


def load(name: str, split: str = 'train') -> Dataset:
  """The in-memory dataset `name` (only 'digits' ships with the package)."""
  if name not in IN_MEMORY_DATASETS:
    raise ValueError(
        f'Unknown dataset {name!r}; choose one of {IN_MEMORY_DATASETS}.'
    )
  return load_digits(split)


def batch_for_step(
    dataset: Dataset,
    *,
    seed: int,
    step: int,
    batch_size: int,
    substeps: int = 1,
    process_index: int = 0,
    process_count: int = 1,
):
  """The training batch of optimizer steps [step, step + substeps).

  Each epoch is a fresh permutation of the data seeded by (seed, epoch), and
  optimizer step k reads positions [k B, (k + 1) B) of the concatenated
  epochs, so any step's batch can be computed directly.

  Returns:
    (images [substeps, B_local, H, W, C], labels [substeps, B_local]), where
    B_local = batch_size / process_count is this process's share.
  """
  n = len(dataset.labels)
  first = step * batch_size
  positions = np.arange(first, first + substeps * batch_size)
  epochs = positions // n
  order = np.empty_like(positions)
  for epoch in np.unique(epochs):
    in_epoch = epochs == epoch
    perm = np.random.default_rng([seed, int(epoch)]).permutation(n)
    order[in_epoch] = perm[positions[in_epoch] % n]
  order = order.reshape(substeps, process_count, batch_size // process_count)
  order = order[:, process_index]
  return dataset.images[order], dataset.labels[order]


def sample_labels(
    num_samples: int, num_classes: int, labels: list | None = None
) -> np.ndarray:
  """Class labels for samples: the given ones cycled, else 0, 1, 2, ..."""
  if labels:
    bad = [y for y in labels if not 0 <= y < num_classes]
    if bad:
      raise ValueError(f'Labels {bad} are outside 0..{num_classes - 1}.')
    return np.resize(np.asarray(labels, np.int32), num_samples)
  return (np.arange(num_samples) % max(num_classes, 1)).astype(np.int32)
