"""The one training loop: resume, train with health checks, save.

Every stretch of training (the teacher, stage one of guided distillation,
each distillation round) is a `Leg`: it resumes from the newest checkpoint
of its folder that restores and belongs to it, else starts from a fresh
state; runs its updates, logging metrics and checking the state's health
(health.py) before every save; saves periodically (by steps and by time)
and once more at the end. A diverged state is never saved or returned. On
SIGTERM or SIGINT it saves after the dispatch in flight and stops
(utils/preemption.py).

The loop knows nothing of where batches come from or where metrics go: the
caller passes them in, so that it serves the pipeline, tests and notebooks
alike.
"""

import dataclasses
import time
from collections.abc import Callable

import jax
import ml_collections
from absl import logging

from diffusion_distillation.training import checkpoints
from diffusion_distillation.training import health
from diffusion_distillation.training import phases
from diffusion_distillation.utils import preemption


@dataclasses.dataclass(frozen=True)
class Leg:
  """A stretch of one phase's training that checkpoints into one folder.

  Attributes:
    phase: what trains (its config section, metric prefix, recovery hint).
    name: how logs name it ('teacher training', 'the 4-step round').
    directory: the folder of its periodic checkpoints.
    num_updates: optimizer steps of the leg (a multiple of substeps).
    meta: saved with each checkpoint; one whose 'num_sample_steps' differs
      (an earlier round's) is not resumed from.
    fresh_note: what a run that diverges before its first save would
      start again from.
    step_offset: global step of the leg's step 0 (later rounds); the leg's
      checkpoints are numbered from it.
    total_updates: optimizer steps of the whole phase, for the ETA.
  """

  phase: phases.Phase
  name: str
  directory: str
  num_updates: int
  meta: dict
  fresh_note: str
  step_offset: int = 0
  total_updates: int = 0


def whole_phase(
    phase: phases.Phase,
    config: ml_collections.ConfigDict,
    directory: str,
    *,
    fresh_note: str,
) -> Leg:
  """A continuous-time phase (the teacher; stage one) as one leg."""
  return Leg(
      phase=phase,
      name=phase.description,
      directory=directory,
      num_updates=phase.num_updates(config),
      meta={'phase': phase.name},
      fresh_note=fresh_note,
  )


def train(
    leg: Leg,
    *,
    config: ml_collections.ConfigDict,
    abstract_state,
    fresh_state: Callable,
    run_step: Callable,
    batches: Callable,
    writer,
):
  """Runs `leg` to its end, resuming what its folder holds.

  Args:
    leg: what to train.
    config: the run's config (the phase's section, checkpoint,
      log_every_steps).
    abstract_state: the TrainState's shapes and placement, to restore into.
    fresh_state: () -> the TrainState to start from without a checkpoint.
    run_step: (state, batch) -> (state, metrics).
    batches: global step -> the batch of steps [step, step + substeps).
    writer: a clu metric writer.

  Returns:
    (state, the last logged metrics as floats).

  Raises:
    RunStopped when the state diverged (health.StateGuard) or too many
    updates were skipped; preemption.Stopped on SIGTERM or SIGINT, after
    saving the state.
  """
  mngr = checkpoints.manager(
      leg.directory, max_to_keep=config.checkpoint.max_to_keep
  )
  state, last_good = _resume(leg, mngr, abstract_state)
  if state is None:
    state = fresh_state()

  def save(state) -> str:
    step = leg.step_offset + int(state.step)
    checkpoints.save(mngr, step, state, leg.meta)
    return f'{leg.directory}/{step}'

  try:
    state, logged = _run(
        leg,
        config,
        state,
        last_good,
        run_step=run_step,
        batches=batches,
        save=save,
        writer=writer,
    )
    # A rerun of a finished leg finds its last state saved already.
    if mngr.latest_step() != leg.step_offset + int(state.step):
      save(state)
  finally:
    mngr.close()
  return state, logged


def _resume(leg: Leg, mngr, abstract_state) -> tuple:
  """(the newest state of this leg that restores, or None; the last good
  checkpoint a diverged run would name)."""
  # A later round's checkpoint at its step_offset is the round before's
  # final state; a leg that starts at 0 may resume from a state saved at 0.
  after_step = leg.step_offset if leg.step_offset else -1
  restored = checkpoints.restore_latest(
      mngr, abstract_state, after_step=after_step
  )
  fresh = (None, f'none: {leg.fresh_note}')
  if restored is None:
    return fresh
  step, state, meta = restored
  if meta.get('num_sample_steps') != leg.meta.get('num_sample_steps'):
    return fresh  # an earlier round's checkpoint
  logging.info('Resuming %s at step %d', leg.name, int(state.step))
  return state, f'{leg.directory}/{step}'


def _run(leg, config, state, last_good, *, run_step, batches, save, writer):
  """The loop from state.step to leg.num_updates; see `train`."""
  from clu import periodic_actions

  section, settings = leg.phase.name, leg.phase.settings(config)
  every, substeps = config.checkpoint, settings.substeps
  report = periodic_actions.ReportProgress(
      num_train_steps=leg.total_updates or leg.num_updates,
      writer=writer,
      every_secs=30.0,
  )
  guard = health.StateGuard(section, settings, state.params, last_good)
  step, logged, last_save = int(state.step), {}, time.time()
  with preemption.deferred():
    while step < leg.num_updates:
      state, metrics = run_step(state, batches(leg.step_offset + step))
      guard.dispatched(metrics)
      step += substeps
      global_step = leg.step_offset + step
      report(global_step)
      if step % config.log_every_steps < substeps or step >= leg.num_updates:
        logged = {k: float(v) for k, v in jax.device_get(metrics).items()}
        guard.check(state, step)
        writer.write_scalars(
            global_step, {f'{section}/{k}': v for k, v in logged.items()}
        )
      # Dispatch counts: the ids JAX's preemption sync expects, +1 each.
      stop = preemption.requested(global_step // substeps)
      due_by_steps = every.every_steps and step % every.every_steps < substeps
      due_by_time = time.time() - last_save >= every.every_secs
      if stop or (step < leg.num_updates and (due_by_steps or due_by_time)):
        guard.check(state, step)
        guard.saved(save(state))
        last_save = time.time()
      if stop:
        preemption.stop(
            f'at {section} step {global_step}, saved as {guard.last_good}'
        )
  guard.check(state, step, final=True)
  return state, logged
