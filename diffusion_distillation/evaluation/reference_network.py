"""The reference networks: small classifiers that define FD on the datasets
without InceptionV3 (digits, Fashion-MNIST).

The Fréchet distance, precision and recall of samples of the bundled digits
and of Fashion-MNIST are measured in the feature space of a classifier of
that dataset, the role InceptionV3 plays for CIFAR-10 and ImageNet (whose
features mean little on 8x8 or 28x28 grayscale images). Each is trained on
its dataset's train split only, deterministically (fixed seed, fixed batch
order, fixed settings), never on generated images, and cached on disk keyed
by a hash of everything that defines it, so every evaluation on every
machine measures with the same network.
"""

import dataclasses
import hashlib
import json
import os

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffusion_distillation.data import datasets
from diffusion_distillation.evaluation import metrics


@dataclasses.dataclass(frozen=True)
class ClassifierSettings:
  """Everything that defines a reference network (hashed into the cache
  key: change any of it and a new network is trained)."""

  dataset: str = 'digits'  # whose train split it learns (train_images)
  image_shape: tuple = (8, 8, 1)
  conv_channels: tuple = (32, 64)  # 3x3 convolutions, stride 2 after the first
  feature_dim: int = 64
  num_classes: int = 10
  seed: int = 0
  train_steps: int = 2000
  batch_size: int = 128
  learning_rate: float = 1e-3
  version: int = 2  # bump when the code below changes what is trained


DIGITS = ClassifierSettings()
# 28 -> 14 -> 7 with 3 convolutions; 3,000 steps of 128 are 6.4 epochs
# (test accuracy in benchmarks/results/fashion_mnist.json).
FASHION_MNIST = ClassifierSettings(
    dataset='fashion_mnist',
    image_shape=(28, 28, 1),
    conv_channels=(32, 64, 128),
    feature_dim=128,
    train_steps=3000,
)
# The datasets scored by a classifier of their own, and its settings.
SETTINGS = {'digits': DIGITS, 'fashion_mnist': FASHION_MNIST}


class Classifier(nn.Module):
  """Conv 3x3 -> conv 3x3 stride 2 (-> ...) -> dense features -> logits."""

  settings: ClassifierSettings

  @nn.compact
  def __call__(self, images):
    """images: [B, H, W, C] in [-1, 1] -> (logits [B, K], features [B, D])."""
    h = images
    for i, channels in enumerate(self.settings.conv_channels):
      h = nn.swish(nn.Conv(channels, (3, 3), strides=1 if i == 0 else 2)(h))
    features = nn.swish(
        nn.Dense(self.settings.feature_dim)(h.reshape(h.shape[0], -1))
    )
    return nn.Dense(self.settings.num_classes)(features), features


def split_images(
    dataset: str, split: str, data_dir: str = ''
) -> datasets.Dataset:
  """The real images a reference network learns from ('train') and samples
  are compared with ('test'): digits' fixed held-out fifth, Fashion-MNIST's
  10,000 test images (read through tfds from `data_dir`)."""
  if dataset == 'digits':
    return datasets.load_digits(split)
  # TensorFlow is imported only for the datasets that stream with it.
  from diffusion_distillation.data import input_pipeline

  return input_pipeline.load_split(dataset, split, data_dir=data_dir)


def cache_dir() -> str:
  root = os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache'))
  return os.path.join(root, 'diffusion_distillation', 'reference')


def _cache_path(settings: ClassifierSettings) -> str:
  key = hashlib.sha256(
      json.dumps(dataclasses.asdict(settings), sort_keys=True).encode()
  ).hexdigest()[:16]
  return os.path.join(
      cache_dir(), f'{settings.dataset}_classifier_{key}.msgpack'
  )


def train_classifier(settings: ClassifierSettings, train: datasets.Dataset):
  """Adam on cross-entropy over seeded epochs of `train`; returns params."""
  model = Classifier(settings)
  params = model.init(jax.random.key(settings.seed), train.images[:1])['params']
  optimizer = optax.adam(settings.learning_rate)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, images, labels):
    def loss_fn(params):
      logits, _ = model.apply({'params': params}, images)
      return optax.softmax_cross_entropy_with_integer_labels(
          logits, labels
      ).mean()

    grads = jax.grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  for index in range(settings.train_steps):
    images, labels = datasets.batch_for_step(
        train, seed=settings.seed, step=index, batch_size=settings.batch_size
    )
    params, opt_state = step(params, opt_state, images[0], labels[0])
  return params


class ReferenceNetwork:
  """A cached reference classifier as `logits(images)` and
  `features(images)`.

  Both take [B, H, W, C] float in [-1, 1] and return NumPy arrays.
  data_dir: where a tfds dataset is prepared, for training it once.
  """

  def __init__(
      self, settings: ClassifierSettings = DIGITS, *, data_dir: str = ''
  ):
    self.settings = settings
    self.cache_path = _cache_path(settings)
    model = Classifier(settings)
    template = model.init(
        jax.random.key(0), jnp.zeros((1, *settings.image_shape))
    )['params']
    if os.path.exists(self.cache_path):
      with open(self.cache_path, 'rb') as f:
        self.params = flax.serialization.from_bytes(template, f.read())
      self.trained_now = False
    else:
      train = split_images(settings.dataset, 'train', data_dir)
      self.params = train_classifier(settings, train)
      os.makedirs(cache_dir(), exist_ok=True)
      tmp = f'{self.cache_path}.{os.getpid()}.tmp'
      with open(tmp, 'wb') as f:
        f.write(flax.serialization.to_bytes(self.params))
      os.replace(tmp, self.cache_path)  # concurrent trainers write the same
      self.trained_now = True
    self._apply = jax.jit(lambda p, x: model.apply({'params': p}, x))

  def logits(self, images) -> np.ndarray:
    return np.asarray(self._apply(self.params, images)[0])

  def features(self, images) -> np.ndarray:
    return np.asarray(self._apply(self.params, images)[1])

  def accuracy(self, images, labels, *, batch_size: int = 500) -> float:
    """Share of images whose argmax class equals the label."""
    logits = metrics.batched_features(
        self.logits, images, batch_size=batch_size
    )
    return float(np.mean(np.argmax(logits, axis=1) == np.asarray(labels)))
