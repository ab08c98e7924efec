"""A run's health: no diverged state is saved, skipped updates are counted.

Before every checkpoint, and at a phase's end, `StateGuard` checks the state
on the device (one reduction, scalars to the host): a state that holds NaN
or inf, or whose largest parameter grew more than GROWTH_LIMIT times past
the last good state's, has diverged. Such a state is never saved, so no
checkpoint saved after a divergence can rotate a good one out; the run
stops with `RunStopped` naming the last good checkpoint and a change the
workdir accepts on resume. The hint offers only what can help: a lower
learning rate always; `skip_nonfinite_updates` only for a run that trained
healthily at its rate before an update went non-finite (a run that diverges
at its first check diverges because of its settings, and skipping would only
keep the finite half of each blow-up). With `skip_nonfinite_updates`, every
skipped update is logged as a warning and the run stops when more than
`max_skipped_fraction` of the recent updates were skipped: a run that skips
most of its updates trains nothing.
"""

import collections

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from diffusion_distillation.utils import errors

# Updates over which the share of skipped ones is judged, and the fewest
# that are judged before a phase ends.
SKIP_WINDOW = 100
MIN_JUDGED = 10
# How many times the last good state's largest parameter a state's may be.
# Adam moves a parameter by about the learning rate per update, so healthy
# training grows it slowly (the paper's runs: by at most ~lr x steps = 160
# over 800k updates at 2e-4, from norm scales of 1); a diverging update
# multiplies it (|params| ~ 1e30 after one update at a huge rate, finite
# until the next update turns it into NaN).
GROWTH_LIMIT = 1e3


def _floating_leaves(tree):
  return [
      leaf
      for leaf in jax.tree_util.tree_leaves(tree)
      if jnp.issubdtype(leaf.dtype, jnp.floating)
  ]


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in _floating_leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


@jax.jit
def _largest_magnitude(tree) -> jax.Array:
  leaves = [jnp.max(jnp.abs(leaf)) for leaf in _floating_leaves(tree)]
  return jnp.max(jnp.stack(leaves)) if leaves else jnp.float32(0)


def is_finite(tree) -> bool:
  """Whether every float in `tree` is finite (computed where it lives)."""
  return bool(_all_finite(tree))


def largest_magnitude(tree) -> float:
  """max |x| over the floats of `tree` (computed where they live)."""
  return float(_largest_magnitude(tree))


def recovery_hint(
    section: str, learning_rate: float, *, offer_skipping: bool = False
) -> str:
  hint = (
      'rerun the same command with a lower learning rate, e.g. '
      f'--config.{section}.learning_rate={learning_rate / 10:g} (the workdir '
      f'accepts a new {section}.learning_rate and records it)'
  )
  if offer_skipping:
    hint += (
        ', or, if a rare update goes non-finite, with '
        f'--config.{section}.skip_nonfinite_updates=True'
    )
  return hint


class StateGuard:
  """Checks a phase's state before each save and at its end, and counts
  the updates `skip_nonfinite_updates` skipped.

  The loop calls `dispatched(metrics)` after each dispatch, `check(state,
  step)` before each save (and at log points, and with final=True at the
  end), and `saved(name)` after each save. `check` raises RunStopped when
  the state diverged or too many updates were skipped; `last_good` names
  what a rerun resumes from.
  """

  def __init__(self, section: str, phase, params, last_good: str):
    """`phase`: the config section; `params`: the state the phase starts
    from (a checkpoint or a fresh start), the first good one."""
    self._section = section
    self._learning_rate = phase.learning_rate
    self.last_good = last_good
    self._good_size = largest_magnitude(params)
    self._checked_size = self._good_size
    self._healthy_checks = 0
    self._skips = (
        SkipMonitor(section, phase.substeps, phase.max_skipped_fraction)
        if phase.skip_nonfinite_updates
        else None
    )

  def dispatched(self, metrics: dict):
    if self._skips:
      self._skips.add(metrics['nonfinite'])

  def check(self, state, step: int, *, final: bool = False):
    """Raises RunStopped unless `state` (at `step`) may be saved."""
    if self._skips:
      self._skips.check(step, self._learning_rate, self.last_good, final=final)
    if not is_finite(state):
      raise self._diverged(
          f'the state holds NaN or inf at step {step}',
          offer_skipping=self._healthy_checks > 0 and not self._skips,
      )
    size = largest_magnitude(state.params)
    # A fresh network may start with every parameter near 0.
    if size > GROWTH_LIMIT * max(self._good_size, 1.0):
      raise self._diverged(
          f'its largest parameter grew to {size:.3g} at step {step} (from '
          f'{self._good_size:.3g} at the last good state)',
          offer_skipping=False,
      )
    self._checked_size = size
    self._healthy_checks += 1

  def saved(self, name: str):
    """The state `check` passed last is saved as `name`."""
    self.last_good = name
    self._good_size = self._checked_size

  def _diverged(self, what: str, *, offer_skipping: bool):
    hint = recovery_hint(
        self._section, self._learning_rate, offer_skipping=offer_skipping
    )
    return errors.RunStopped(
        f'{self._section} diverged: {what}; this state was not saved and '
        f'the last good checkpoint is {self.last_good}. To resume from it, '
        f'{hint}.'
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

  def check(
      self,
      step: int,
      learning_rate: float,
      last_good: str,
      *,
      final: bool = False,
  ):
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
          f'the run trains nothing. The state at step {step} was not saved; '
          f'the last good checkpoint is {last_good}; to resume from it, '
          + recovery_hint(self._section, learning_rate)
          + '.'
      )
