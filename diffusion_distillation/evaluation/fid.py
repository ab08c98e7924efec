"""FID, Inception Score, precision and recall of images against a reference.

One code path for `--mode=eval` on the tfds datasets and for this command,
which scores any samples in the ADM layout against an ADM-layout reference:

  python -m diffusion_distillation.evaluation.fid --samples=samples_4.npz \
      --reference=VIRTUAL_imagenet64_labeled.npz \
      --inception_weights=inception_fid.npz [--batch_size=500] [--out=x.json]

Files (local or gs://), as the ADM evaluator (openai/guided-diffusion
`evaluations/evaluator.py`) reads them:
  samples    npz with arr_0: uint8 [N, H, W, 3];
  reference  npz with mu [2048] and sigma [2048, 2048], the pool_3 mean and
             covariance that FID compares with, and optionally arr_0, the
             reference images, whose features precision and recall need
             (without them those two are reported as null).

Scores, as the ADM evaluator computes them: FID from the samples' pool_3
mean and covariance (N - 1) against the reference's mu and sigma; Inception
Score from softmax(pool_3 @ W) over consecutive parts of 5,000 samples;
precision and recall with k = 3 (`precision_recall.py`).
"""

import dataclasses
import io
import json
import sys

import numpy as np
from absl import app
from absl import flags

from diffusion_distillation.evaluation import inception
from diffusion_distillation.evaluation import metrics
from diffusion_distillation.evaluation import precision_recall
from diffusion_distillation.utils import errors
from diffusion_distillation.utils import files

IS_SPLIT_SIZE = 5_000  # the ADM evaluator's Inception Score part size
PR_NEIGHBOURS = 3  # k of precision and recall


@dataclasses.dataclass(frozen=True)
class Reference:
  """What samples are scored against.

  stats: mu [2048] and sigma [2048, 2048], float64.
  features: pool_3 features [M, 2048] of the reference images, or None.
  source: where it came from, for the results.
  """

  stats: metrics.FeatureStats
  features: np.ndarray | None
  source: str


def read_npz(path: str, what: str) -> dict:
  """All arrays of an npz file, local or gs://; InputError if unreadable."""
  source = files.as_path(path)
  if not source.exists():
    raise errors.InputError(f'{what} {path} does not exist.')
  try:
    with np.load(io.BytesIO(source.read_bytes())) as npz:
      return {name: npz[name] for name in npz.files}
  except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
    raise errors.InputError(
        f'Cannot read {what} {path} as .npz ({type(e).__name__}: {e}).'
    ) from None


def check_images(images: np.ndarray, what: str) -> np.ndarray:
  """arr_0 of an ADM-layout file: uint8 [N, H, W, 3]."""
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
    raise errors.InputError(
        f'{what} arr_0 must be uint8 RGB images [N, H, W, 3] (the ADM '
        f'layout); got {images.dtype} {images.shape}.'
    )
  if len(images) <= PR_NEIGHBOURS:
    raise errors.InputError(
        f'{what} holds {len(images)} images; scoring needs more than '
        f'{PR_NEIGHBOURS}.'
    )
  return images


def load_reference(
    path: str, network: inception.FeatureNetwork, *, batch_size: int
) -> Reference:
  """An ADM-layout reference npz: mu and sigma, and features of arr_0 if
  the file holds images (as the ADM evaluator computes them)."""
  arrays = read_npz(path, 'Reference')
  if 'mu' not in arrays or 'sigma' not in arrays:
    raise errors.InputError(
        f'Reference {path} has no mu and sigma (it holds '
        f'{sorted(arrays)}); use an ADM reference batch or one this '
        'project wrote.'
    )
  mu, sigma = (np.asarray(arrays[k], np.float64) for k in ('mu', 'sigma'))
  if mu.shape != (inception.POOL_DIM,) or sigma.shape != (
      inception.POOL_DIM,
      inception.POOL_DIM,
  ):
    raise errors.InputError(
        f'Reference {path}: mu {mu.shape} and sigma {sigma.shape} are not '
        f'Inception pool_3 statistics ([{inception.POOL_DIM}] and '
        f'[{inception.POOL_DIM}, {inception.POOL_DIM}]).'
    )
  features = None
  if 'arr_0' in arrays:
    images = check_images(arrays['arr_0'], f'Reference {path}')
    features, _ = network(
        images, batch_size=batch_size, progress='reference features'
    )
  # count 0: the file does not say how many images mu and sigma describe.
  return Reference(metrics.FeatureStats(mu, sigma, 0), features, path)


def reference_from_images(
    images: np.ndarray,
    network: inception.FeatureNetwork,
    *,
    batch_size: int,
    source: str,
) -> Reference:
  """The reference of real images: their features, mean and covariance."""
  features, _ = network(
      images, batch_size=batch_size, progress='reference features'
  )
  return Reference(metrics.feature_stats(features), features, source)


def write_reference(path: str, images: np.ndarray, reference: Reference):
  """An ADM-layout reference npz: arr_0 (the images), mu, sigma."""
  buffer = io.BytesIO()
  np.savez(
      buffer,
      arr_0=images,
      mu=reference.stats.mean,
      sigma=reference.stats.cov,
  )
  files.write_atomically(path, buffer.getvalue())


def score(
    images: np.ndarray,
    reference: Reference,
    network: inception.FeatureNetwork,
    *,
    batch_size: int,
) -> dict:
  """FID, Inception Score (mean and std over parts), precision and recall
  of uint8 images [N, H, W, 3] against `reference`."""
  features, logits = network(images, batch_size=batch_size)
  fid = metrics.frechet_distance(
      metrics.feature_stats(features), reference.stats
  )
  is_mean, is_std = metrics.inception_score(logits, split_size=IS_SPLIT_SIZE)
  precision = recall = None
  if reference.features is not None:
    precision, recall = precision_recall.precision_recall(
        reference.features, features, k=PR_NEIGHBOURS
    )
  return {
      'fid': fid,
      'inception_score': is_mean,
      'inception_score_std': is_std,
      'precision': precision,
      'recall': recall,
      'num_samples': len(images),
  }


def score_files(
    samples: str, reference: str, weights: str, *, batch_size: int
) -> dict:
  """The command's work: score a samples npz against a reference npz."""
  arrays = read_npz(samples, 'Samples')
  if 'arr_0' not in arrays:
    raise errors.InputError(
        f'Samples {samples} have no arr_0 (they hold {sorted(arrays)}).'
    )
  images = check_images(arrays['arr_0'], f'Samples {samples}')
  network = inception.FeatureNetwork(inception.load_params(weights))
  if batch_size < 1 or batch_size % network.mesh.size:
    raise errors.InputError(
        f'--batch_size={batch_size} is not a multiple of the '
        f'{network.mesh.size} devices.'
    )
  result = score(
      images,
      load_reference(reference, network, batch_size=batch_size),
      network,
      batch_size=batch_size,
  )
  result.update(
      samples=samples,
      reference=reference,
      inception_weights=weights,
      weights_fingerprint=network.fingerprint,
  )
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from diffusion_distillation.utils import cli

  cli.quiet_start()
  values = flags.FLAGS
  try:
    result = score_files(
        values.samples,
        values.reference,
        values.inception_weights,
        batch_size=values.batch_size,
    )
  except errors.InputError as e:
    cli.exit_on_bad_input(e)
  if values.out:
    files.write_json(result, values.out)
  json.dump(result, sys.stdout, indent=2, sort_keys=True)
  print()


if __name__ == '__main__':
  # Flags only when run as a command, so that importing defines none.
  flags.DEFINE_string('samples', None, 'npz with arr_0 uint8 [N, H, W, 3].')
  flags.DEFINE_string(
      'reference', None, 'npz with mu, sigma (and arr_0 for precision/recall).'
  )
  flags.DEFINE_string(
      'inception_weights',
      None,
      'InceptionV3 weights: .npz from `python -m diffusion_distillation.'
      "inception`, or fidjax's pickle.",
  )
  flags.DEFINE_integer(
      'batch_size', 500, 'Images per step, a multiple of the device count.'
  )
  flags.DEFINE_string('out', '', 'Also write the scores to this JSON file.')
  flags.mark_flags_as_required(['samples', 'reference', 'inception_weights'])
  app.run(main)
