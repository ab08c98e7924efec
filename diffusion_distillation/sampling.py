"""Drawing samples from a model and writing them as .npz files and grids.

`samples_<N>.npz` holds `arr_0`, uint8 [num, H, W, C], and for
class-conditional models `arr_1`, int32 labels: the layout the widely used
ADM FID evaluator reads.

Methods: 'ddim', 'ancestral' (sample.logvar_type) and 'stochastic' (the
N-step sampler of Meng et al. 2023 for distilled students). `Sampler`
samples the network as it is; the guided wing's subclass
(diffusion_distillation/guided/sampling.py) samples at a guidance strength
w through its two hooks, `strength` and `denoise_fn`.
"""

import io

import jax
import ml_collections
import numpy as np
from PIL import Image

from diffusion_distillation import diffusion
from diffusion_distillation import network as network_lib
from diffusion_distillation import schedules
from diffusion_distillation import unet
from diffusion_distillation.data import datasets
from diffusion_distillation.utils import files
from diffusion_distillation.utils import sharding

METHODS = ('ddim', 'ancestral', 'stochastic')
GRID_SIZE = 100  # samples shown in a .png grid


class Sampler:
  """Samples from a network's parameters; compiles once per step count and
  method (and per kind of parameters where `denoise_fn` tells them apart;
  w is an argument).

  A subclass conditions the samples on a guidance strength w: `strength`
  says which w a `sample(guidance=...)` call samples at, `denoise_fn`
  builds the denoise function at it.
  """

  def __init__(
      self,
      network: unet.UNet,
      config: ml_collections.ConfigDict,
      mesh=None,
      batch_size: int | None = None,
  ):
    self._network = network
    self._config = config
    self._mesh = mesh if mesh is not None else sharding.make_mesh()
    self._batch_size = batch_size or config.sample.batch_size
    self._compiled = {}

  def _compiled_for(self, num_steps: int, method: str):
    if method not in METHODS:
      raise ValueError(
          f'Unknown sampling method {method!r}; choose one of {METHODS}.'
      )
    key = (num_steps, method)
    if key not in self._compiled:
      model, sample = self._config.model, self._config.sample
      schedule = schedules.get_logsnr_schedule(**model.logsnr_schedule)

      def run(params, z, labels, rng, w):
        denoise = self.denoise_fn(params, labels, w)
        if method == 'ddim':
          return diffusion.ddim_sample(
              denoise, z_init=z, num_steps=num_steps, logsnr_schedule=schedule
          )
        if method == 'stochastic':
          return diffusion.stochastic_sample(
              denoise,
              rng=rng,
              z_init=z,
              num_steps=num_steps,
              logsnr_schedule=schedule,
          )
        return diffusion.ancestral_sample(
            denoise,
            rng=rng,
            z_init=z,
            num_steps=num_steps,
            logsnr_schedule=schedule,
            variance=sample.logvar_type,
        )

      rep = sharding.replicated(self._mesh)
      shard = sharding.sample_sharding(self._mesh)
      # Replicated samples: every process can read them (the gather is small).
      self._compiled[key] = jax.jit(
          run, in_shardings=(rep, shard, shard, rep, rep), out_shardings=rep
      )
    return self._compiled[key]

  def denoise_fn(self, params, labels, w):
    """The denoise_fn(z, logsnr) that sampling runs (traced): the network
    at `params` for `labels`. `w` is the guidance strength `strength`
    returned, which a network without guidance ignores."""
    del w  # no guidance here; see the class doc
    return network_lib.denoise_fn(
        self._network,
        params,
        labels,
        mean_type=self._config.model.mean_type,
        clip_x=self._config.sample.clip_x,
    )

  def strength(self, guidance: float | None) -> float:
    """The guidance strength w a sample(guidance=...) call samples at: none
    here (0), so a strength is refused."""
    if guidance:
      raise ValueError(
          f'guidance={guidance} needs a guided config (one with a guidance '
          'section, e.g. configs/digits_guided.py).'
      )
    return 0.0

  def noise(self, num_samples: int, seed: int) -> np.ndarray:
    """Starting noise N(0, I); fixed by the seed, shared by every model."""
    size, channels = (
        self._config.dataset.image_size,
        self._config.dataset.channels,
    )
    return np.asarray(
        jax.random.normal(
            jax.random.key(seed), (num_samples, size, size, channels)
        )
    )

  def sample(
      self,
      params,
      *,
      num_steps: int,
      num_samples: int,
      labels: np.ndarray | None = None,
      seed: int = 0,
      method: str = 'ddim',
      z: np.ndarray | None = None,
      guidance: float | None = None,
  ):
    """Samples x in [-1, 1], [num_samples, H, W, C] float32 (NumPy).

    `method` is 'ddim', 'ancestral' (with sample.logvar_type) or
    'stochastic'; `z` the starting noise, by default
    `noise(num_samples, seed)`; `guidance` the guidance strength w of a
    guided config (default sample.guidance).
    """
    batch_size = self._batch_size
    z = self.noise(num_samples, seed) if z is None else z
    if labels is None:
      labels = np.zeros((num_samples,), np.int32)
    w = self.strength(guidance)
    run = self._compiled_for(num_steps, method)
    w = sharding.replicate(np.float32(w), self._mesh)
    rng = jax.random.key(seed + 1)
    out = []
    for start in range(0, num_samples, batch_size):
      z_batch, y_batch = (
          z[start : start + batch_size],
          labels[start : start + batch_size],
      )
      pad = batch_size - len(z_batch)  # keep one compiled batch shape
      z_batch = np.pad(z_batch, ((0, pad),) + ((0, 0),) * (z.ndim - 1))
      y_batch = np.pad(y_batch, (0, pad))
      shard = sharding.sample_sharding(self._mesh)
      x = run(
          params,
          sharding.global_array(z_batch, shard),
          sharding.global_array(y_batch, shard),
          jax.random.fold_in(rng, start),
          w,
      )
      out.append(np.asarray(x)[: batch_size - pad])
    return np.concatenate(out, axis=0)


def image_grid(
    images: np.ndarray, *, columns: int = 10, scale: int = 1, border: int = 1
) -> np.ndarray:
  """uint8 [N, H, W, C] -> one uint8 picture, cells split by gray lines.

  Each image is enlarged `scale` times (nearest) and framed by `border`
  pixels of mid gray, so that dark-edged images stay apart.
  """
  num, height, width, channels = images.shape
  rows = -(-num // columns)
  images = np.repeat(np.repeat(images, scale, axis=1), scale, axis=2)
  cell_h, cell_w = height * scale + border, width * scale + border
  grid = np.full(
      (rows * cell_h + border, columns * cell_w + border, channels),
      128,
      np.uint8,
  )
  for index, image in enumerate(images):
    top = border + (index // columns) * cell_h
    left = border + (index % columns) * cell_w
    grid[top : top + height * scale, left : left + width * scale] = image
  return grid


def write_samples(
    directory: str,
    name: str,
    images: np.ndarray,
    labels: np.ndarray | None = None,
) -> dict:
  """Writes <name>.npz (arr_0 uint8 images, arr_1 labels) and <name>.png
  (a grid of the first GRID_SIZE images).

  Args:
    directory: created if needed; local or a URL such as gs://bucket/dir.
    name: file stem, e.g. 'samples_4'.
    images: uint8 [N, H, W, C].
    labels: optional int32 [N].

  Returns:
    {'npz': path, 'png': path}.
  """
  directory = files.as_path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  arrays = {'arr_0': images}
  if labels is not None:
    arrays['arr_1'] = labels.astype(np.int32)
  npz = io.BytesIO()
  np.savez(npz, **arrays)
  # The first GRID_SIZE samples: enough to judge by eye, small to open.
  grid = image_grid(images[:GRID_SIZE], scale=max(1, 32 // images.shape[1]))
  png = io.BytesIO()
  Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(
      png, format='PNG'
  )
  paths = {}
  for suffix, buffer in (('npz', npz), ('png', png)):
    path = directory / f'{name}.{suffix}'
    files.write_atomically(path, buffer.getvalue())
    paths[suffix] = str(path)
  return paths


def sample_labels_for(
    config: ml_collections.ConfigDict, num_samples: int
) -> np.ndarray | None:
  """The labels to sample with, or None for an unconditional model."""
  if not config.dataset.class_conditional:
    return None
  return datasets.sample_labels(
      num_samples, config.dataset.num_classes, list(config.sample.labels)
  )
