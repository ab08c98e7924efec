"""Orbax checkpoints: a synchronous manager, save, and restore that falls
back past a checkpoint that does not restore. What lives where in a workdir
is workdir.py's.
"""

import gc
import sys
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from diffusion_distillation import files


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
  """Saves `tree` and a JSON `meta` at `step`; written atomically by orbax."""
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
    _EchoFilter.install()  # echoes can come while orbax still raises
    try:
      tree, meta = restore(mngr, step, abstract_tree)
    except Exception as e:  # noqa: BLE001 - any failure: fall back a step
      _EchoFilter.failed = True  # its echoes may come later: keep it
      gc.collect()  # the aborted reads report now, not in later code
      reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
      moved = _move_aside(mngr.directory, step)
      logging.warning(
          'Checkpoint %s/%d does not restore (%s: %s); moved it to %s and '
          'resuming from the one before.',
          mngr.directory,
          step,
          type(e).__name__,
          reason[:200],
          moved,
      )
      if jax.process_count() > 1:  # every process sees the step gone
        multihost_utils.sync_global_devices(f'moved aside {step}')
      mngr.reload()
      continue
    _EchoFilter.uninstall_unless_failed()
    return step, tree, meta
  _EchoFilter.uninstall_unless_failed()
  return None


# What orbax's aborted reads of a checkpoint that failed to restore report
# afterwards through sys.unraisablehook (hundreds of multi-line tracebacks,
# possibly during later, unrelated code): TensorStore callbacks posting to
# orbax's closed event loop, and read coroutines closed by the collector.
_ABORTED_READ_ECHOES = (
    'Event loop is closed',
    'Encountered error while reading array index',
)


def _is_aborted_read_echo(error) -> bool:
  return any(echo in str(error) for echo in _ABORTED_READ_ECHOES)


class _EchoFilter:
  """Wraps sys.unraisablehook during a restore so that it drops those
  echoes; every other unraisable exception goes to the hook that was there.
  After a restore failed the wrapper stays (its echoes may come much later);
  otherwise the hook is put back. The failure itself is reported in one
  warning line by restore_latest."""

  failed = False
  _previous = None  # the hook that was there, while installed
  _hook = None

  @classmethod
  def install(cls):
    if cls._previous is not None:
      return
    previous = sys.unraisablehook

    def hook(unraisable):
      if not _is_aborted_read_echo(unraisable.exc_value):
        previous(unraisable)

    cls._previous, cls._hook = previous, hook
    sys.unraisablehook = hook

  @classmethod
  def uninstall_unless_failed(cls):
    if cls.failed or cls._previous is None:
      return
    if sys.unraisablehook is cls._hook:  # nobody wrapped it since
      sys.unraisablehook = cls._previous
    cls._previous = None


def _move_aside(directory, step: int):
  if jax.process_index() != 0:
    return '(moved by process 0)'
  directory = files.as_path(directory)
  aside = directory.parent / f'{directory.name}.corrupt'
  aside.mkdir(parents=True, exist_ok=True)
  target = aside / f'{step}-{time.strftime("%Y%m%d-%H%M%S")}'
  (directory / str(step)).rename(target)
  return target
