"""Improved precision and recall (Kynkäänniemi et al., 2019), as the ADM
evaluator computes them.

Each set of feature vectors stands for a manifold: the union of balls around
its points, each ball's squared radius the squared distance to the point's
k-th nearest neighbour in its own set (k = 3; the point itself is the 0-th).
Precision is the share of samples inside the reference manifold, recall the
share of reference points inside the sample manifold. As in the ADM
evaluator, distances are squared Euclidean distances max(|u|^2 - 2 u.v +
|v|^2, 0) computed in float16, a block of 10,000 x 10,000 pairs at a time;
a block with a non-finite float16 distance is computed again in float32;
"inside" means distance <= radius. Blocks run jitted on the default device.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

DTYPES = ('float16', 'float32')


def _squared_distances(u, v, dtype):
  u, v = u.astype(dtype), v.astype(dtype)
  norm_u = jnp.sum(jnp.square(u), axis=1)[:, None]
  norm_v = jnp.sum(jnp.square(v), axis=1)[None, :]
  return jnp.maximum(norm_u - 2 * (u @ v.T) + norm_v, 0)


def _block_distances(u, v, dtype):
  """float32 distances [R, C]; float16 ones unless one is not finite."""
  if dtype == 'float32':
    return _squared_distances(u, v, jnp.float32)
  rough = _squared_distances(u, v, jnp.float16)
  return jax.lax.cond(
      jnp.all(jnp.isfinite(rough)),
      lambda: rough.astype(jnp.float32),
      lambda: _squared_distances(u, v, jnp.float32),
  )


@functools.partial(jax.jit, static_argnames=('k', 'dtype'))
def _nearest_update(best, rows, columns, valid_columns, *, k, dtype):
  """The k + 1 smallest distances per row so far, with a new column block."""
  distances = _block_distances(rows, columns, dtype)
  distances = jnp.where(valid_columns[None, :], distances, jnp.inf)
  smallest, _ = jax.lax.top_k(-jnp.concatenate([best, distances], 1), k + 1)
  return -smallest


@functools.partial(jax.jit, static_argnames=('dtype',))
def _inside(features_a, radii_a, features_b, radii_b, *, dtype):
  """Which rows of a lie in some ball of b, and which rows of b in some
  ball of a. Padding carries radius -inf: no ball."""
  distances = _block_distances(features_a, features_b, dtype)
  a_in_b = jnp.any(distances <= radii_b[None, :], axis=1)
  b_in_a = jnp.any(distances <= radii_a[:, None], axis=0)
  return a_in_b, b_in_a


def _blocks(features, block_size):
  """(start, count, block zero-padded to [block_size, D]) over the rows."""
  for start in range(0, len(features), block_size):
    block = features[start : start + block_size]
    yield start, len(block), np.pad(
        block, ((0, block_size - len(block)), (0, 0))
    )


def _padded(values, start, size, fill):
  part = values[start : start + size]
  return np.concatenate([part, np.full(size - len(part), fill, values.dtype)])


def _check(features, name, k):
  features = np.asarray(features, np.float32)
  if features.ndim != 2 or len(features) <= k:
    raise ValueError(
        f'{name} must be [N, D] with N > k={k}; got shape {features.shape}.'
    )
  return features


def manifold_radii(
    features, *, k: int = 3, block_size: int = 10_000, dtype: str = 'float16'
) -> np.ndarray:
  """Squared distance of each point to its k-th nearest neighbour in the
  set (itself excluded): [N] float32."""
  features = _check(features, 'features', k)
  if dtype not in DTYPES:
    raise ValueError(f'dtype must be one of {DTYPES}; got {dtype!r}.')
  block_size = min(block_size, len(features))
  radii = np.empty(len(features), np.float32)
  for start, count, rows in _blocks(features, block_size):
    best = jnp.full((block_size, k + 1), jnp.inf, jnp.float32)
    for column_start, _, columns in _blocks(features, block_size):
      valid = _padded(
          np.ones(len(features), bool), column_start, block_size, False
      )
      best = _nearest_update(best, rows, columns, valid, k=k, dtype=dtype)
    radii[start : start + count] = np.asarray(best[:count, k])
  return radii


def precision_recall(
    reference_features,
    sample_features,
    *,
    k: int = 3,
    block_size: int = 10_000,
    dtype: str = 'float16',
) -> tuple[float, float]:
  """(precision, recall) of samples against reference points.

  Args:
    reference_features: [N_ref, D], e.g. Inception pool_3 of real images.
    sample_features: [N_sample, D].
    k: neighbourhood size (the ADM evaluator's 3).
    block_size: rows and columns per distance block (the evaluator's 10,000;
      it decides which blocks fall back to float32).
    dtype: 'float16' (the evaluator's, with its float32 fallback) or
      'float32'.

  Returns:
    precision: share of samples within the reference manifold;
    recall: share of reference points within the sample manifold.
  """
  reference = _check(reference_features, 'reference_features', k)
  samples = _check(sample_features, 'sample_features', k)
  if reference.shape[1] != samples.shape[1]:
    raise ValueError(
        f'Feature sizes differ: {reference.shape[1]} and {samples.shape[1]}.'
    )
  kwargs = dict(k=k, block_size=block_size, dtype=dtype)
  reference_radii = manifold_radii(reference, **kwargs)
  sample_radii = manifold_radii(samples, **kwargs)
  ref_block = min(block_size, len(reference))
  sample_block = min(block_size, len(samples))
  reference_inside = np.zeros(len(reference), bool)
  samples_inside = np.zeros(len(samples), bool)
  for ref_start, ref_count, ref_rows in _blocks(reference, ref_block):
    ref_radii = _padded(reference_radii, ref_start, ref_block, -np.inf)
    for start, count, rows in _blocks(samples, sample_block):
      radii = _padded(sample_radii, start, sample_block, -np.inf)
      ref_in, samples_in = _inside(
          ref_rows, ref_radii, rows, radii, dtype=dtype
      )
      reference_inside[ref_start : ref_start + ref_count] |= np.asarray(ref_in)[
          :ref_count
      ]
      samples_inside[start : start + count] |= np.asarray(samples_in)[:count]
  return float(samples_inside.mean()), float(reference_inside.mean())
