"""Improved precision and recall on point sets whose answers are known, and
against a brute-force reading of the definition."""

import numpy as np
import pytest

from diffusion_distillation.evaluation import precision_recall


def _on_a_line(*positions, dim=4):
  """Points x * e_1 in `dim` dimensions."""
  points = np.zeros((len(positions), dim), np.float32)
  points[:, 0] = positions
  return points


def _brute_force(reference, samples, k=3):
  def squared(a, b):
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)

  reference_radii = np.sort(squared(reference, reference), axis=1)[:, k]
  sample_radii = np.sort(squared(samples, samples), axis=1)[:, k]
  distances = squared(reference, samples)
  precision = (distances <= reference_radii[:, None]).any(axis=0).mean()
  recall = (distances <= sample_radii[None, :]).any(axis=1).mean()
  return precision, recall


def test_radii_are_squared_distances_to_the_third_neighbour():
  # 0..9 on a line: the ends' third neighbour is 3 away, an inner point's
  # is 2 away (one on each side, then a tie at distance 2).
  radii = precision_recall.manifold_radii(_on_a_line(*range(10)))
  np.testing.assert_array_equal(radii, [9, 4, 4, 4, 4, 4, 4, 4, 4, 9])


def test_known_precision_and_recall():
  reference = _on_a_line(*range(10))
  # Balls: [-3, 3] at the ends' centres, radius 2 inside, so [-3, 12]
  # in all: 3 of these 4 samples lie inside.
  samples = _on_a_line(-2.5, 4.5, 11.9, 30.0)
  precision, recall = precision_recall.precision_recall(reference, samples)
  assert precision == 0.75
  # Four samples: each one's third neighbour is the farthest other sample,
  # so their balls hold every reference point.
  assert recall == 1.0
  # Samples 0..4: balls of squared radius 9 at 0 and 4, 4 inside, cover
  # [-3, 7], which holds 8 of the 10 reference points.
  assert precision_recall.precision_recall(
      reference, _on_a_line(*range(5))
  ) == (1.0, 0.8)
  far = _on_a_line(*range(100, 110))
  assert precision_recall.precision_recall(reference, far) == (0.0, 0.0)
  assert precision_recall.precision_recall(reference, reference) == (1.0, 1.0)


@pytest.mark.parametrize('dtype', ['float32', 'float16'])
@pytest.mark.parametrize('block_size', [7, 10_000])
def test_blocks_and_padding_give_the_brute_force_answer(dtype, block_size):
  rng = np.random.default_rng(0)
  reference = rng.normal(size=(37, 16)).astype(np.float32)
  samples = (1.5 * rng.normal(size=(23, 16)) + 0.3).astype(np.float32)
  expected = _brute_force(reference, samples)
  got = precision_recall.precision_recall(
      reference, samples, block_size=block_size, dtype=dtype
  )
  np.testing.assert_allclose(
      got, expected, atol=1 / 23 if dtype == 'float16' else 0
  )
  assert 0 < got[0] < 1


def test_float16_overflow_falls_back_to_float32():
  # Squared norms of 1e3-sized features overflow float16 (max 65504); the
  # block is then computed in float32, as in the ADM evaluator.
  rng = np.random.default_rng(1)
  reference = 1e3 * rng.normal(size=(20, 8)).astype(np.float32)
  samples = 1e3 * (rng.normal(size=(20, 8)) + 0.5).astype(np.float32)
  expected = _brute_force(reference, samples)
  got = precision_recall.precision_recall(reference, samples)
  np.testing.assert_allclose(got, expected)


def test_too_few_points_are_refused():
  with pytest.raises(ValueError, match='N > k=3'):
    precision_recall.precision_recall(
        _on_a_line(0, 1, 2), _on_a_line(*range(5))
    )
