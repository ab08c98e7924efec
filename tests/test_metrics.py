"""Sample-quality metrics against closed forms and direct computations."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from diffusion_distillation.evaluation import metrics


def _random_spd(rng, dim):
  """A well-conditioned random symmetric positive-definite [dim, dim]."""
  factor = rng.normal(size=(dim, dim))
  return factor @ factor.T / dim + 0.1 * np.eye(dim)


def _reference_fd(mean_a, cov_a, mean_b, cov_b):
  """Fréchet distance via Tr (C_a^(1/2) C_b C_a^(1/2))^(1/2), by eigh."""
  eigenvalues, eigenvectors = np.linalg.eigh(cov_a)
  sqrt_a = (
      eigenvectors
      @ np.diag(np.sqrt(np.clip(eigenvalues, 0, None)))
      @ eigenvectors.T
  )
  inner = np.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a)
  return (
      np.sum((mean_a - mean_b) ** 2)
      + np.trace(cov_a)
      + np.trace(cov_b)
      - 2.0 * np.sum(np.sqrt(np.clip(inner, 0, None)))
  )


def _stats(mean, cov):
  return metrics.FeatureStats(mean=mean, cov=cov, count=0)


# ----------------------------------------------------------------------------
# Fréchet distance


def test_fd_diagonal_closed_form():
  rng = np.random.default_rng(0)
  mean_a, mean_b = rng.normal(size=16), rng.normal(size=16)
  var_a, var_b = rng.uniform(0.1, 3.0, 16), rng.uniform(0.1, 3.0, 16)
  expected = np.sum((mean_a - mean_b) ** 2) + np.sum(
      (np.sqrt(var_a) - np.sqrt(var_b)) ** 2
  )
  got = metrics.frechet_distance(
      _stats(mean_a, np.diag(var_a)), _stats(mean_b, np.diag(var_b))
  )
  assert isinstance(got, float)
  np.testing.assert_allclose(got, expected, rtol=1e-10)


@pytest.mark.parametrize('dim', [2, 8, 32])
def test_fd_matches_eigendecomposition(dim):
  rng = np.random.default_rng(dim)
  mean_a, mean_b = rng.normal(size=dim), rng.normal(size=dim)
  cov_a, cov_b = _random_spd(rng, dim), _random_spd(rng, dim)
  got = metrics.frechet_distance(_stats(mean_a, cov_a), _stats(mean_b, cov_b))
  np.testing.assert_allclose(
      got, _reference_fd(mean_a, cov_a, mean_b, cov_b), rtol=1e-8
  )


def test_fd_identical_is_zero_and_symmetric():
  rng = np.random.default_rng(1)
  stats_a = _stats(rng.normal(size=24), _random_spd(rng, 24))
  stats_b = _stats(rng.normal(size=24), _random_spd(rng, 24))
  assert metrics.frechet_distance(stats_a, stats_a) < 1e-9
  np.testing.assert_allclose(
      metrics.frechet_distance(stats_a, stats_b),
      metrics.frechet_distance(stats_b, stats_a),
      rtol=1e-10,
  )


def test_fd_from_gaussian_samples_approaches_analytic():
  rng = np.random.default_rng(2)
  dim, num = 4, 200_000
  mean_a, mean_b = np.zeros(dim), np.full(dim, 0.5)
  cov_a, cov_b = _random_spd(rng, dim), _random_spd(rng, dim)
  stats_a = metrics.feature_stats(rng.multivariate_normal(mean_a, cov_a, num))
  stats_b = metrics.feature_stats(rng.multivariate_normal(mean_b, cov_b, num))
  expected = _reference_fd(mean_a, cov_a, mean_b, cov_b)
  np.testing.assert_allclose(
      metrics.frechet_distance(stats_a, stats_b), expected, rtol=0.02
  )


def test_fd_rank_deficient_features_are_finite_and_accurate():
  rng = np.random.default_rng(3)
  dim, num = 64, 20  # D > N: both covariances have rank N - 1
  features_a = rng.normal(size=(num, dim))
  features_b = rng.normal(size=(num, dim)) + 0.3
  stats_a = metrics.feature_stats(features_a)
  stats_b = metrics.feature_stats(features_b)
  got = metrics.frechet_distance(stats_a, stats_b)
  assert math.isfinite(got) and got > 0
  np.testing.assert_allclose(
      got,
      _reference_fd(stats_a.mean, stats_a.cov, stats_b.mean, stats_b.cov),
      rtol=1e-4,
  )
  assert metrics.frechet_distance(stats_a, stats_a) < 1e-6


def test_fd_rejects_bad_stats():
  with pytest.raises(ValueError, match='disagree'):
    metrics.frechet_distance(
        _stats(np.zeros(3), np.eye(3)), _stats(np.zeros(4), np.eye(4))
    )
  with pytest.raises(ValueError, match='positive semi-definite'):
    metrics.frechet_distance(
        _stats(np.zeros(2), np.diag([1.0, -1.0])),
        _stats(np.zeros(2), np.eye(2)),
    )


# ----------------------------------------------------------------------------
# Feature statistics and batching


def test_feature_stats_matches_numpy():
  features = np.random.default_rng(4).normal(size=(50, 6)).astype(np.float32)
  stats = metrics.feature_stats(features)
  assert stats.mean.dtype == stats.cov.dtype == np.float64
  assert stats.count == 50
  np.testing.assert_allclose(
      stats.mean, features.astype(np.float64).mean(0), rtol=1e-12
  )
  np.testing.assert_allclose(
      stats.cov, np.cov(features.astype(np.float64), rowvar=False), rtol=1e-12
  )


@pytest.mark.parametrize('features', [np.zeros((1, 3)), np.zeros(5)])
def test_feature_stats_rejects_bad_input(features):
  with pytest.raises(ValueError):
    metrics.feature_stats(features)


@pytest.mark.parametrize('num_images', [23, 5])
def test_batched_features_matches_unbatched(num_images):
  weights = jax.random.normal(jax.random.key(0), (4 * 4 * 3, 7))
  traced_shapes = []

  @jax.jit
  def feature_fn(images):
    traced_shapes.append(images.shape)  # runs once per compilation
    return jnp.tanh(images.reshape(images.shape[0], -1) @ weights)

  images = (
      np.random.default_rng(5)
      .uniform(-1, 1, (num_images, 4, 4, 3))
      .astype(np.float32)
  )
  got = metrics.batched_features(feature_fn, images, batch_size=8)
  assert traced_shapes == [(8, 4, 4, 3)]  # the padded last batch too
  assert isinstance(got, np.ndarray) and got.shape == (num_images, 7)
  np.testing.assert_allclose(
      got, np.asarray(feature_fn(images)), rtol=1e-5, atol=1e-6
  )


# ----------------------------------------------------------------------------
# Inception Score


def test_inception_score_uniform_is_one():
  mean, std = metrics.inception_score(np.zeros((100, 10)))
  assert mean == pytest.approx(1.0, abs=1e-12)
  assert std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_confident_and_balanced_is_num_classes():
  num_classes = 10
  labels = np.arange(1000) % num_classes  # every split holds each class
  logits = 1e3 * np.eye(num_classes)[labels]  # softmax underflows off-label
  mean, std = metrics.inception_score(logits)
  assert mean == pytest.approx(num_classes, rel=1e-9)
  assert std == pytest.approx(0.0, abs=1e-9)


def test_inception_score_matches_direct_computation():
  logits = 3.0 * np.random.default_rng(6).normal(size=(503, 7))
  scores = []
  for part in np.array_split(special.softmax(logits, axis=1), 5):
    marginal = part.mean(axis=0)
    kl = np.sum(part * (np.log(part) - np.log(marginal)), axis=1)
    scores.append(np.exp(kl.mean()))
  mean, std = metrics.inception_score(logits, num_splits=5)
  np.testing.assert_allclose(
      [mean, std], [np.mean(scores), np.std(scores)], rtol=1e-10
  )
  shifted = metrics.inception_score(logits + 100.0, num_splits=5)
  np.testing.assert_allclose(shifted, (mean, std), rtol=1e-10)


def test_inception_score_in_parts_of_a_size_as_the_adm_evaluator():
  # The ADM evaluator: parts of split_size consecutive samples, the last
  # shorter, p(y) within each part, the mean of exp(mean KL) over parts.
  logits = 3.0 * np.random.default_rng(8).normal(size=(23, 7))
  probs = special.softmax(logits, axis=1)
  scores = []
  for start in range(0, 23, 10):
    part = probs[start : start + 10]
    kl = part * (np.log(part) - np.log(part.mean(axis=0, keepdims=True)))
    scores.append(np.exp(np.mean(np.sum(kl, axis=1))))
  mean, _ = metrics.inception_score(logits, split_size=10)
  assert mean == pytest.approx(np.mean(scores), rel=1e-10)
  # Equal parts: the same as num_splits.
  assert metrics.inception_score(logits[:20], split_size=10) == pytest.approx(
      metrics.inception_score(logits[:20], num_splits=2), rel=1e-12
  )


# ----------------------------------------------------------------------------
# MSE and PSNR


def test_mse_and_psnr_constant_offset():
  images = np.random.default_rng(7).uniform(-1, 1, (6, 4, 4, 3))
  offset = 0.1
  mse, psnr = metrics.mse_and_psnr(images + offset, images)
  assert mse == pytest.approx(offset**2, rel=1e-9)
  assert psnr == pytest.approx(10 * math.log10(2.0**2 / offset**2), rel=1e-9)
  _, psnr_unit = metrics.mse_and_psnr(images + offset, images, data_range=1.0)
  assert psnr_unit == pytest.approx(20.0, rel=1e-9)


def test_mse_and_psnr_reports_psnr_of_mean_mse():
  images = np.zeros((2, 3, 3, 1))
  other = images.copy()
  other[1] += 0.2  # pair 0 identical, pair 1 offset: mean MSE 0.02
  mse, psnr = metrics.mse_and_psnr(images, other)
  assert mse == pytest.approx(0.02, rel=1e-9)
  assert psnr == pytest.approx(10 * math.log10(4.0 / 0.02), rel=1e-9)


def test_mse_and_psnr_identical():
  images = np.random.default_rng(8).uniform(-1, 1, (3, 4, 4, 3))
  assert metrics.mse_and_psnr(images, images) == (0.0, math.inf)


def test_mse_and_psnr_rejects_shape_mismatch():
  with pytest.raises(ValueError):
    metrics.mse_and_psnr(np.zeros((2, 4, 4, 3)), np.zeros((2, 4, 4, 1)))
