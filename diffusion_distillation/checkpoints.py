"""Orbax checkpoints, the workdir's layout, and the run-config guard.

Workdir layout:
  config.json           the config that started the run (guards resumption)
  teacher/<step>/       periodic teacher TrainStates (bounded number kept)
  distill/<step>/       periodic student TrainStates, step counted over all
                        rounds (bounded number kept)
  models/<N>/           final EMA parameters of each model, kept forever:
                        N = 0 is the continuous-time teacher, N > 0 the
                        student that samples in N steps
  samples/              samples_<N>.npz and grid_<N>.png
"""

import datetime
import gc
import json
import os
import time
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from diffusion_distillation import errors
from diffusion_distillation import files
from diffusion_distillation import preemption
from diffusion_distillation import quiet

# Config parts that may change between a run and its resumption: they do
# not change what is trained, or say where things are.
_RESUMABLE_CHANGES = (
    'checkpoint',
    'sample',
    'eval',
    'log_every_steps',
    'dataset.data_dir',
    'dataset.manual_dir',
)
# What may change to rescue a run that diverged: it changes the training
# from the step it resumes at, so the change is recorded in the workdir
# (config_changes.json).
RECOVERY_CHANGES = tuple(
    f'{section}.{field}'
    for section in ('train', 'distill')
    for field in (
        'learning_rate',
        'skip_nonfinite_updates',
        'max_skipped_fraction',
    )
)


def _flatten(tree, prefix=''):
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f'{prefix}{key}.'))
    return out
  return {prefix[:-1]: tree}


def _matches(key: str, names: tuple) -> bool:
  return any(key == name or key.startswith(name + '.') for name in names)


def check_run_config(workdir: str, config: ml_collections.ConfigDict) -> dict:
  """Refuses a workdir that holds a run of another config.

  Returns:
    {field: (recorded, new)} of the RECOVERY_CHANGES that differ.

  Raises:
    InputError naming the first differing field that may not change.
  """
  path = files.as_path(workdir) / 'config.json'
  if not path.exists():
    return {}
  recorded = json.loads(path.read_text())
  old = _flatten(recorded)
  new = _flatten(json.loads(config.to_json_best_effort()))
  recovery = {}
  for key in sorted(set(old) | set(new)):
    before, after = old.get(key, '<absent>'), new.get(key, '<absent>')
    if before == after or _matches(key, _RESUMABLE_CHANGES):
      continue
    if key in RECOVERY_CHANGES:
      recovery[key] = (before, after)
      continue
    raise errors.InputError(
        f'{workdir} holds a run of a different config: {key} is '
        f'{before!r} there and {after!r} here; use a new --workdir or the '
        'same config.'
    )
  return recovery


def record_run_config(
    workdir: str, config: ml_collections.ConfigDict, changes: dict = None
):
  """Writes config.json into a new workdir; with `changes` (recovery fields
  check_run_config accepted), rewrites it and appends the change to
  config_changes.json. Process 0 only."""
  directory = files.as_path(workdir)
  path = directory / 'config.json'
  if jax.process_index() != 0 or (path.exists() and not changes):
    return
  directory.mkdir(parents=True, exist_ok=True)
  if changes:
    log = directory / 'config_changes.json'
    history = json.loads(log.read_text()) if log.exists() else []
    history.append({
        'date': (
            datetime.datetime.now().astimezone().isoformat(timespec='seconds')
        ),
        'changed': {k: {'from': a, 'to': b} for k, (a, b) in changes.items()},
    })
    files.write_atomically(log, json.dumps(history, indent=2))
  files.write_atomically(
      path,
      json.dumps(
          json.loads(config.to_json_best_effort()), indent=2, sort_keys=True
      ),
  )


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
  and finished even when SIGTERM or SIGINT comes (preemption.py)."""
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


def models_dir(workdir: str) -> str:
  return os.path.join(workdir, 'models')


def save_model(workdir: str, num_sample_steps: int, params: Any, meta: dict):
  """Keeps a finished model (teacher: 0, student: its step count) forever."""
  mngr = manager(models_dir(workdir), max_to_keep=None)
  save(
      mngr,
      num_sample_steps,
      {'params': params},
      dict(meta, num_sample_steps=num_sample_steps),
  )
  mngr.close()


def saved_models(workdir: str) -> list:
  """Step counts of the models saved in `workdir`, ascending."""
  if not files.as_path(models_dir(workdir)).is_dir():
    return []
  mngr = manager(models_dir(workdir), max_to_keep=None)
  steps = sorted(mngr.all_steps())
  mngr.close()
  return steps


def model_meta(workdir: str, num_sample_steps: int) -> dict:
  """The JSON metadata saved with models/<num_sample_steps>, without the
  parameters (e.g. 'seconds' it took to train)."""
  mngr = manager(models_dir(workdir), max_to_keep=None)
  meta = mngr.restore(
      num_sample_steps, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
  )['meta']
  mngr.close()
  return meta


def resolve_model_path(path: str, num_sample_steps: int = 0) -> tuple:
  """(models directory, step) for a workdir or a models/<N> directory."""
  path = files.as_path(path)
  if (path / 'models').is_dir():
    return str(path / 'models'), num_sample_steps
  if path.name.isdigit() and path.is_dir():
    return str(path.parent), int(path.name)
  raise errors.InputError(
      f'No model checkpoint at {path}: give a workdir that holds models/ '
      '(e.g. one finished with --mode=train) or a models/<N> directory.'
  )


def load_model(
    path: str,
    abstract_params: Any,
    *,
    num_sample_steps: int = 0,
    sharding=None,
    source: str = 'checkpoint',
) -> tuple:
  """Loads a model's parameters, checking them against the network's shapes.

  Args:
    path: a workdir (its models/<num_sample_steps>) or a models/<N> directory.
    abstract_params: the config network's parameter shapes.
    num_sample_steps: which model of a workdir.
    sharding: where to place the parameters (e.g. replicated on a mesh);
      default: this process's first device.
    source: what the path is, for error messages ('teacher checkpoint').

  Returns:
    (params, meta).

  Raises:
    InputError when the checkpoint is missing or does not fit the network.
  """
  directory, step = resolve_model_path(path, num_sample_steps)
  if not (files.as_path(directory) / str(step)).is_dir():
    raise errors.InputError(
        f'Missing {source}: {directory}/{step} does not exist; train it first '
        '(--mode=train) or point the config at an existing one.'
    )
  mngr = manager(directory, max_to_keep=None)
  metadata = mngr.item_metadata(step)['state']['params']
  check_param_shapes(metadata, abstract_params, f'{source} {directory}/{step}')
  if sharding is None:
    # Not the saved shardings: they name the devices of the run that wrote
    # the model (e.g. all hosts of a TPU slice).
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree_util.tree_map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
      abstract_params,
  )
  params, meta = restore(mngr, step, {'params': target})
  mngr.close()
  return params['params'], meta


def check_param_shapes(found: Any, expected: Any, source: str):
  """Raises InputError naming the first parameter that does not fit."""

  def by_name(tree):
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        '/'.join(str(getattr(k, 'key', k)) for k in path): tuple(leaf.shape)
        for path, leaf in leaves
    }

  found, expected = by_name(found), by_name(expected)
  for name in sorted(set(found) | set(expected)):
    if name not in found:
      raise errors.InputError(
          f'{source} lacks parameter {name} (shape {expected[name]}) that this '
          "config's network has; the model config does not match it."
      )
    if name not in expected:
      raise errors.InputError(
          f"{source} has parameter {name} that this config's network lacks; "
          'the model config does not match it.'
      )
    if found[name] != expected[name]:
      raise errors.InputError(
          f"{source} does not fit this config's network: parameter {name} "
          f'has shape {found[name]} there and {expected[name]} here.'
      )
