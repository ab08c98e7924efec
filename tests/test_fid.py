"""Scoring images against a reference (the path --mode=eval and the
stand-alone command share): FID against the formulas of fidjax and of the
ADM evaluator, against itself and a shifted reference, the reference files,
the command and its refusals."""

import dataclasses
import io
import json
import re

import numpy as np
import pytest
from scipy import linalg

from diffusion_distillation.evaluation import fid as fid_lib
from diffusion_distillation.evaluation import inception
from diffusion_distillation.evaluation import metrics
from diffusion_distillation.utils import errors
from tests.helpers import run_python


@pytest.fixture(scope='module')
def params():
  return inception.random_params(0)


@pytest.fixture(scope='module')
def network(params):
  return inception.FeatureNetwork(params, input_size=75)


def _images(count, seed=0, size=32):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def _fidjax_compute_score(features_a, features_b):
  """fidjax's FID.compute_stats + compute_score, in NumPy: mean, covariance
  (N - 1), 1e-6 added to both covariances inside the square root only."""
  mu_a, mu_b = features_a.mean(0), features_b.mean(0)
  sigma_a = np.cov(features_a, rowvar=False)
  sigma_b = np.cov(features_b, rowvar=False)
  offset = np.eye(len(mu_a)) * 1e-6
  covmean = np.real(linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset)))
  diff = mu_a - mu_b
  return diff @ diff + np.trace(sigma_a + sigma_b - 2 * covmean)


def _adm_frechet_distance(features_a, features_b):
  """The ADM evaluator's FIDStatistics.frechet_distance (full-rank case)."""
  mu_a, mu_b = features_a.mean(0), features_b.mean(0)
  sigma_a = np.cov(features_a, rowvar=False)
  sigma_b = np.cov(features_b, rowvar=False)
  covmean = np.real(linalg.sqrtm(sigma_a @ sigma_b))
  diff = mu_a - mu_b
  return (
      diff @ diff
      + np.trace(sigma_a)
      + np.trace(sigma_b)
      - 2 * np.trace(covmean)
  )


def test_fid_equals_fidjax_and_the_adm_evaluator_on_the_same_features():
  # Non-negative, correlated features, more of them than dimensions (as
  # 50,000 samples of 2048-d features); benchmarks/fid_features.py repeats
  # this at 2048 dimensions.
  rng = np.random.default_rng(0)
  dim = 256
  mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
  features_a = np.maximum(rng.normal(size=(600, dim)) @ mixing, 0)
  features_b = np.maximum(
      (1.1 * rng.normal(size=(600, dim)) + 0.05) @ mixing, 0
  )
  ours = metrics.frechet_distance(
      metrics.feature_stats(features_a), metrics.feature_stats(features_b)
  )
  assert ours > 1
  assert ours == pytest.approx(
      _fidjax_compute_score(features_a, features_b), rel=1e-3
  )
  assert ours == pytest.approx(
      _adm_frechet_distance(features_a, features_b), rel=1e-8
  )


@pytest.mark.slow
def test_images_against_their_own_reference_and_a_shifted_one(network):
  images = _images(12)
  reference = fid_lib.reference_from_images(
      images, network, batch_size=4, source='test'
  )
  own = fid_lib.score(images, reference, network, batch_size=8)
  assert own['fid'] == pytest.approx(0.0, abs=1e-6)
  assert own['precision'] == own['recall'] == 1.0
  assert 1.0 <= own['inception_score'] <= inception.NUM_LOGITS
  assert own['num_samples'] == 12
  # A reference mean moved by delta: FID = |delta|^2 (same covariance).
  delta = np.random.default_rng(1).normal(size=inception.POOL_DIM) * 0.05
  shifted = dataclasses.replace(
      reference,
      stats=reference.stats._replace(mean=reference.stats.mean + delta),
  )
  got = fid_lib.score(images, shifted, network, batch_size=8)['fid']
  assert got == pytest.approx(delta @ delta, rel=1e-4)


@pytest.mark.slow
def test_reference_file_round_trip(network, tmp_path):
  images = _images(10)
  reference = fid_lib.reference_from_images(
      images, network, batch_size=5, source='test'
  )
  path = str(tmp_path / 'ref.npz')
  fid_lib.write_reference(path, images, reference)
  with np.load(path) as f:  # the ADM layout
    assert sorted(f.files) == ['arr_0', 'mu', 'sigma']
    assert f['mu'].shape == (2048,) and f['sigma'].shape == (2048, 2048)
    assert f['arr_0'].dtype == np.uint8
  again = fid_lib.load_reference(path, network, batch_size=5)
  np.testing.assert_array_equal(again.stats.mean, reference.stats.mean)
  np.testing.assert_array_equal(again.stats.cov, reference.stats.cov)
  np.testing.assert_allclose(again.features, reference.features, rtol=1e-6)
  # mu and sigma alone (no images): FID only.
  buffer = io.BytesIO()
  np.savez(buffer, mu=reference.stats.mean, sigma=reference.stats.cov)
  (tmp_path / 'stats.npz').write_bytes(buffer.getvalue())
  stats_only = fid_lib.load_reference(
      str(tmp_path / 'stats.npz'), network, batch_size=5
  )
  result = fid_lib.score(images, stats_only, network, batch_size=5)
  assert result['fid'] == pytest.approx(0.0, abs=1e-6)
  assert result['precision'] is None and result['recall'] is None


def _write_npz(path, **arrays):
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  path.write_bytes(buffer.getvalue())
  return str(path)


@pytest.mark.parametrize(
    'samples,reference,message',
    [
        (None, 'ok', 'Samples {tmp}/none.npz does not exist'),
        (dict(arr_0=np.zeros((8, 4, 4, 3))), 'ok', 'must be uint8 RGB'),
        (dict(images=np.zeros((8, 4, 4, 3), np.uint8)), 'ok', 'have no arr_0'),
        (dict(arr_0=np.zeros((3, 4, 4, 3), np.uint8)), 'ok', 'more than 3'),
        ('ok', dict(arr_0=np.zeros((8, 4, 4, 3), np.uint8)), 'no mu and sigma'),
        ('ok', dict(mu=np.zeros(64), sigma=np.eye(64)), 'not Inception pool_3'),
    ],
)
def test_bad_files_are_refused_in_one_line(
    params, tmp_path, samples, reference, message
):
  weights = str(tmp_path / 'w.npz')
  inception.save_params(params, weights)
  good = dict(arr_0=_images(8))
  files = {}
  for name, arrays in (('samples', samples), ('reference', reference)):
    if arrays is None:
      files[name] = str(tmp_path / 'none.npz')
    else:
      arrays = good if arrays == 'ok' else arrays
      if name == 'reference' and arrays is good:
        arrays = dict(good, mu=np.zeros(2048), sigma=np.eye(2048))
      files[name] = _write_npz(tmp_path / f'{name}.npz', **arrays)
  with pytest.raises(
      errors.InputError, match=re.escape(message.format(tmp=tmp_path))
  ):
    fid_lib.score_files(
        files['samples'], files['reference'], weights, batch_size=4
    )


@pytest.mark.slow
def test_command_scores_an_npz_against_a_reference(params, network, tmp_path):
  weights = str(tmp_path / 'inception_fid.npz')
  inception.save_params(params, weights)
  images = _images(8)
  graph_size = inception.FeatureNetwork(params)
  reference = fid_lib.reference_from_images(
      images, graph_size, batch_size=4, source='test'
  )
  fid_lib.write_reference(str(tmp_path / 'ref.npz'), images, reference)
  samples = _write_npz(tmp_path / 'samples.npz', arr_0=images)
  out = tmp_path / 'scores.json'
  command = [
      '-m',
      'diffusion_distillation.evaluation.fid',
      f'--samples={samples}',
      f'--reference={tmp_path / "ref.npz"}',
      f'--inception_weights={weights}',
      '--batch_size=4',
      f'--out={out}',
  ]
  result = run_python(command)
  assert result.returncode == 0, result.stderr[-3000:]
  scores = json.loads(result.stdout)
  assert scores == json.loads(out.read_text())
  assert scores['fid'] == pytest.approx(0.0, abs=1e-6)
  assert scores['precision'] == scores['recall'] == 1.0
  assert scores['weights_fingerprint'] == inception.fingerprint(params)
  bad = run_python(command[:-3] + ['--inception_weights=/nonexistent.npz'])
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines() == [
      'error: Inception weights /nonexistent.npz do not exist; '
      + inception.WEIGHTS_HELP
      + '.'
  ]
