"""Orbax checkpoints: a synchronous manager, save, and restore that falls
back past a checkpoint that does not restore. What lives where in a workdir
is runs/workdir.py's.
"""

import gc
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from diffusion_distillation.utils import files
from diffusion_distillation.utils import preemption
from diffusion_distillation.utils import quiet


def manager(directory: str, *, max_to_keep: int | None):
  """A synchronous orbax CheckpointManager (None keeps every step)."""
  return ocp.CheckpointManager(
      files.as_path(directory),
      item_handlers={
          'state': ocp.StandardCheckpointHandler(),
          'meta': ocp.JsonCheckpointHandler(),
      },
      options=ocp.CheckpointManagerOptions(
          max_to_keep=max_to_keep,
          create=True,
          enable_async_checkpointing=False,
          # Half-written checkpoints of a killed run; never a finished one.
          cleanup_tmp_directories=True,
      ),
  )


def save(mngr: ocp.CheckpointManager, step: int, tree: Any, meta: dict):
  """Saves `tree` and a JSON `meta` at `step`; written atomically by orbax,
  and finished even when SIGTERM or SIGINT comes (utils/preemption.py)."""
  with preemption.shielded():
    mngr.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)
        ),
        force=True,
    )
    mngr.wait_until_finished()


def restore(mngr: ocp.CheckpointManager, step: int, abstract_tree: Any):
  """(tree, meta) at `step`, placed as `abstract_tree`'s shardings say."""
  restored = mngr.restore(
      step,
      args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_tree),
          meta=ocp.args.JsonRestore(),
      ),
  )
  return restored['state'], restored['meta']


def restore_latest(
    mngr: ocp.CheckpointManager, abstract_tree: Any, *, after_step: int = -1
):
  """(step, tree, meta) of the newest checkpoint after `after_step` that
  restores, or None.

  A checkpoint that fails to restore (truncated or missing files, an empty
  step folder) is moved aside to <directory>.corrupt/<step>-<time>, never
  deleted, with one warning line; the next older one is tried.
  """
  for step in sorted(mngr.all_steps(), reverse=True):
    if step <= after_step:
      break
    quiet.ABORTED_READS.install()  # echoes can come while orbax still raises
    try:
      tree, meta = restore(mngr, step, abstract_tree)
    except Exception as e:  # noqa: BLE001 - any failure: fall back a step
      quiet.ABORTED_READS.keep()  # its echoes may come later
      gc.collect()  # the aborted reads report now, not in later code
      # Orbax wraps TensorStore's error (which names the damaged file) in
      # one that quotes a repr of the C++ bindings.
      cause = e
      while cause.__cause__ is not None:
        cause = cause.__cause__
      reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
      moved = _move_aside(mngr.directory, step)
      logging.warning(
          'Checkpoint %s/%d does not restore (%s: %s); moved it to %s and '
          'resuming from the one before.',
          mngr.directory,
          step,
          type(cause).__name__,
          reason[:300],
          moved,
      )
      if jax.process_count() > 1:  # every process sees the step gone
        multihost_utils.sync_global_devices(f'moved aside {step}')
      mngr.reload()
      continue
    quiet.ABORTED_READS.uninstall_unless_kept()
    return step, tree, meta
  quiet.ABORTED_READS.uninstall_unless_kept()
  return None


def _move_aside(directory, step: int):
  if jax.process_index() != 0:
    return '(moved by process 0)'
  directory = files.as_path(directory)
  aside = directory.parent / f'{directory.name}.corrupt'
  aside.mkdir(parents=True, exist_ok=True)
  target = aside / f'{step}-{time.strftime("%Y%m%d-%H%M%S")}'
  (directory / str(step)).rename(target)
  return target
