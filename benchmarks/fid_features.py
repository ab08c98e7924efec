"""FID features: the whole feature loop against the Inception passes alone.

The loop (`inception.FeatureNetwork.__call__`, what eval and the fid command
run) sends each batch of uint8 images from the host, runs InceptionV3 on
every device and copies the features back. The passes alone run the same
compiled network on batches already on the devices, nothing copied back.
The issue's target: loop / passes <= 1.2 over 1,000 images. Both are timed
in turns, the fastest round of each compared (a shared machine's other jobs
slow some rounds), with random weights
(timing does not depend on them) on CIFAR-sized 32x32 images.

Optionally (--fid_dim), the FID of two sets of synthetic non-negative
features computed by metrics.frechet_distance against the formulas of the
ADM evaluator (scipy sqrtm) and of fidjax's compute_score (1e-6 added to
both covariances inside the root), with their timings.

  python -m benchmarks.fid_features [--num_images=1000] [--batch_size=50]
      [--input_size=299] [--rounds=2] [--fid_dim=2048] [--out=...]
"""

import json
import os
import statistics
import time

import jax
import numpy as np
from absl import flags
from scipy import linalg

from benchmarks import command
from benchmarks import timing
from diffusion_distillation.evaluation import inception
from diffusion_distillation.evaluation import metrics


def _define_flags():
  """The command's flags; defined only when it runs (benchmarks/command.py)."""
  flags.DEFINE_integer('num_images', 1000, 'random images to featurise')
  flags.DEFINE_integer('batch_size', 50, 'images per network call')
  flags.DEFINE_integer(
      'input_size',
      inception.INPUT_SIZE,
      "the resize target; 299 is the graph's, 75 the smallest",
  )
  flags.DEFINE_integer('rounds', 2, 'timed turns')
  flags.DEFINE_integer('fid_dim', 0, 'feature size of the FID check')
  flags.DEFINE_string(
      'out',
      os.path.join(timing.RESULTS, 'fid_features.json'),
      'the JSON to write',
  )


def feature_timings(args) -> dict:
  network = inception.FeatureNetwork(
      inception.random_params(0), input_size=args.input_size
  )
  images = np.random.default_rng(0).integers(
      0, 256, (args.num_images, 32, 32, 3), dtype=np.uint8
  )
  batches = [
      network.device_batch(images[start : start + args.batch_size])
      for start in range(0, args.num_images, args.batch_size)
  ]

  def passes_alone():
    return [network.apply(batch) for batch in batches]

  def loop():
    return network(images, batch_size=args.batch_size)

  timing.progress('compiling')
  jax.block_until_ready(passes_alone())
  loop()
  timing.progress(f'timing {args.rounds} rounds of each')
  seconds = timing.interleaved_seconds(
      [('passes_alone', passes_alone), ('feature_loop', loop)], args.rounds
  )
  # The fastest round of each is the one least slowed by other jobs on a
  # shared machine; the medians are given too.
  fastest = {name: min(s) for name, s in seconds.items()}
  median = {name: statistics.median(s) for name, s in seconds.items()}
  return {
      'seconds': seconds,
      'images_per_sec': {
          name: args.num_images / value for name, value in fastest.items()
      },
      'loop_over_passes': fastest['feature_loop'] / fastest['passes_alone'],
      'loop_over_passes_median': (
          median['feature_loop'] / median['passes_alone']
      ),
  }


def fid_agreement(dim: int) -> dict:
  rng = np.random.default_rng(0)
  num = dim + dim // 4  # more features than dimensions, as with 50,000
  mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
  features = [
      np.maximum(rng.normal(size=(num, dim)) @ mixing, 0),
      np.maximum((1.1 * rng.normal(size=(num, dim)) + 0.05) @ mixing, 0),
  ]
  stats = [metrics.feature_stats(f) for f in features]
  start = time.perf_counter()
  ours = metrics.frechet_distance(*stats)
  ours_seconds = time.perf_counter() - start
  diff = stats[0].mean - stats[1].mean
  start = time.perf_counter()
  root = np.real(linalg.sqrtm(stats[0].cov @ stats[1].cov))
  adm = diff @ diff + np.trace(stats[0].cov + stats[1].cov) - 2 * np.trace(root)
  sqrtm_seconds = time.perf_counter() - start
  offset = 1e-6 * np.eye(dim)
  root = np.real(
      linalg.sqrtm((stats[0].cov + offset) @ (stats[1].cov + offset))
  )
  fidjax = diff @ diff + np.trace(stats[0].cov + stats[1].cov - 2 * root)
  return {
      'dim': dim,
      'num_features': num,
      'fid': ours,
      'fid_adm_formula': float(adm),
      'fid_fidjax_formula': float(fidjax),
      'relative_difference_adm': abs(ours - adm) / adm,
      'relative_difference_fidjax': abs(ours - fidjax) / fidjax,
      'seconds_eigh': ours_seconds,
      'seconds_sqrtm': sqrtm_seconds,
  }


def main(args):
  result = {
      'num_images': args.num_images,
      'batch_size': args.batch_size,
      'input_size': args.input_size,
      'image_size': 32,
      'weights': 'random (inception.random_params(0))',
      **feature_timings(args),
  }
  timing.progress(
      f'loop / passes alone: {result["loop_over_passes"]:.3f} '
      f'({result["images_per_sec"]})'
  )
  if args.fid_dim:
    timing.progress(f'FID check at {args.fid_dim} dimensions')
    result['fid_agreement'] = fid_agreement(args.fid_dim)
    timing.progress(str(result['fid_agreement']))
  result['provenance'] = timing.provenance()
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(result, f, indent=2)
  print(json.dumps(result, indent=2))


if __name__ == '__main__':
  command.run(_define_flags, main)
