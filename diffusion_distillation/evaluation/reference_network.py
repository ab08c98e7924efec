"""The digits reference network: a small classifier that defines FD on digits.

The Fréchet distance of the bundled digits data is measured in the feature
space of this classifier, the role InceptionV3 plays for CIFAR-10 and
ImageNet. It is trained on the digits train split only, deterministically
(fixed seed, fixed batch order, fixed settings), never on generated images,
and cached on disk keyed by a hash of everything that defines it, so every
evaluation on every machine measures with the same network.
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
  """Everything that defines the reference network (hashed into the cache
  key: change any of it and a new network is trained)."""

  conv_channels: tuple = (32, 64)
  feature_dim: int = 64
  num_classes: int = 10
  seed: int = 0
  train_steps: int = 2000
  batch_size: int = 128
  learning_rate: float = 1e-3
  version: int = 1  # bump when the code below changes what is trained


class DigitsClassifier(nn.Module):
  """Conv 3x3 -> conv 3x3 stride 2 -> dense features -> logits."""

  settings: ClassifierSettings

  @nn.compact
  def __call__(self, images):
    """images: [B, 8, 8, 1] in [-1, 1] -> (logits [B, K], features [B, D])."""
    h = images
    for i, channels in enumerate(self.settings.conv_channels):
      h = nn.swish(nn.Conv(channels, (3, 3), strides=1 if i == 0 else 2)(h))
    features = nn.swish(
        nn.Dense(self.settings.feature_dim)(h.reshape(h.shape[0], -1))
    )
    return nn.Dense(self.settings.num_classes)(features), features


def cache_dir() -> str:
  root = os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache'))
  return os.path.join(root, 'diffusion_distillation', 'reference')


def _cache_path(settings: ClassifierSettings) -> str:
  key = hashlib.sha256(
      json.dumps(dataclasses.asdict(settings), sort_keys=True).encode()
  ).hexdigest()[:16]
  return os.path.join(cache_dir(), f'digits_classifier_{key}.msgpack')


def train_classifier(settings: ClassifierSettings, train: datasets.Dataset):
  """Adam on cross-entropy over seeded epochs of `train`; returns params."""
  model = DigitsClassifier(settings)
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
  """The cached digits classifier as `logits(images)` and `features(images)`.

  Both take [B, 8, 8, 1] float in [-1, 1] and return NumPy arrays.
  """

  def __init__(self, settings: ClassifierSettings = ClassifierSettings()):
    self.settings = settings
    self.cache_path = _cache_path(settings)
    template = DigitsClassifier(settings).init(
        jax.random.key(0), jnp.zeros((1, 8, 8, 1))
    )['params']
    if os.path.exists(self.cache_path):
      with open(self.cache_path, 'rb') as f:
        self.params = flax.serialization.from_bytes(template, f.read())
      self.trained_now = False
    else:
      self.params = train_classifier(settings, datasets.load_digits('train'))
      os.makedirs(cache_dir(), exist_ok=True)
      tmp = f'{self.cache_path}.{os.getpid()}.tmp'
      with open(tmp, 'wb') as f:
        f.write(flax.serialization.to_bytes(self.params))
      os.replace(tmp, self.cache_path)  # concurrent trainers write the same
      self.trained_now = True
    model = DigitsClassifier(settings)
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
