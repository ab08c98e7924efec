"""A run's health: no non-finite state is saved, skipped updates are counted.

Before every checkpoint the state is checked for NaN/inf on the device (one
reduction, a scalar to the host); a diverged run stops with `RunStopped`
naming the last good checkpoint and a change the workdir accepts on resume
(a lower learning rate, or skipping non-finite updates). With
`skip_nonfinite_updates`, every skipped update is logged as a warning and the
run stops when more than `max_skipped_fraction` of the recent updates were
skipped: a run that skips most of its updates trains nothing.
"""

import collections

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from diffusion_distillation import errors

# Updates over which the share of skipped ones is judged, and the fewest
# that are judged before a phase ends.
SKIP_WINDOW = 100
MIN_JUDGED = 10


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [
      jnp.all(jnp.isfinite(leaf))
      for leaf in jax.tree_util.tree_leaves(tree)
      if jnp.issubdtype(leaf.dtype, jnp.floating)
  ]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def is_finite(tree) -> bool:
  """Whether every float in `tree` is finite (computed where it lives)."""
  return bool(_all_finite(tree))


def recovery_hint(
    section: str, learning_rate: float, *, offer_skipping: bool = True
) -> str:
  hint = (
      'rerun the same command with a lower learning rate, e.g. '
      f'--config.{section}.learning_rate={learning_rate / 10:g} (the workdir '
      f'accepts a new {section}.learning_rate and records it)'
  )
  if offer_skipping:
    hint += f', or with --config.{section}.skip_nonfinite_updates=True'
  return hint


def diverged(
    section: str, step: int, last_good: str, learning_rate: float
) -> errors.RunStopped:
  return errors.RunStopped(
      f'{section} diverged: the state holds NaN or inf at step {step} and was '
      f'not saved; the last good checkpoint is {last_good}. To resume from '
      f'it, {recovery_hint(section, learning_rate)}.'
  )


class SkipMonitor:
  """Counts the updates `skip_nonfinite_updates` skipped.

  `add` takes each dispatch's device scalar without waiting for it; `check`
  (at log and save points, and at the end) reads them, warns about skipped
  updates, and raises RunStopped when more than `max_fraction` of the last
  SKIP_WINDOW updates were skipped (judged from MIN_JUDGED updates on, or at
  the end of a phase).
  """

  def __init__(self, section: str, substeps: int, max_fraction: float):
    self._section = section
    self._substeps = substeps
    self._max_fraction = max_fraction
    self._pending = []
    self._recent = collections.deque(maxlen=max(1, SKIP_WINDOW // substeps))

  def add(self, nonfinite_count: jax.Array):
    self._pending.append(nonfinite_count)

  def check(self, step: int, learning_rate: float, *, final: bool = False):
    if not self._pending:
      return
    counts = [int(c) for c in np.asarray(jax.device_get(self._pending))]
    self._pending = []
    self._recent.extend(counts)
    skipped = sum(counts)
    if skipped:
      logging.warning(
          '%s: skipped %d non-finite update(s) of the %d up to step %d',
          self._section,
          skipped,
          len(counts) * self._substeps,
          step,
      )
    recent_updates = len(self._recent) * self._substeps
    recent_skipped = sum(self._recent)
    judged = final or recent_updates >= MIN_JUDGED
    if judged and recent_skipped > self._max_fraction * recent_updates:
      raise errors.RunStopped(
          f'{self._section}: {recent_skipped} of the last {recent_updates} '
          'updates were non-finite and skipped (more than '
          f'{self._section}.max_skipped_fraction={self._max_fraction:g}); '
          'the run trains nothing. The state was not saved; '
          + recovery_hint(self._section, learning_rate, offer_skipping=False)
          + '.'
      )
