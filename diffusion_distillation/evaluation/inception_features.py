"""pool_3 features and logits of many images, on every device of a mesh:
InceptionV3 (inception_net.py) with weights from inception_weights.py,
compiled once, its batches sharded over the device mesh."""

import collections
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from diffusion_distillation.evaluation import inception_net
from diffusion_distillation.evaluation import inception_weights
from diffusion_distillation.utils import errors
from diffusion_distillation.utils import sharding


class FeatureNetwork:
  """pool_3 features and logits of uint8 images, on every device of a mesh.

  One compiled function per batch shape; each batch is split over the
  mesh's devices. Results stay on the devices until a later batch has been
  dispatched, so the host never waits for one batch before sending the
  next (the only per-batch traffic is the images in and the features out).
  """

  def __init__(
      self,
      params: dict,
      mesh=None,
      *,
      input_size: int = inception_net.INPUT_SIZE,
  ):
    """
    Args:
      params: weights in the library's layout (`load_params`).
      mesh: the 'data' mesh (default: all devices).
      input_size: the resize target; 299 is the graph's, smaller sizes
        only make tests and benchmarks cheaper.
    """
    self.mesh = mesh if mesh is not None else sharding.make_mesh()
    self.fingerprint = inception_weights.fingerprint(params)
    self._params = sharding.replicate(
        inception_net.module_params(params), self.mesh
    )
    model = inception_net.InceptionV3()

    def apply(params, images):
      x = inception_net.tf1_resize_bilinear(
          images.astype(jnp.float32), input_size
      )
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
