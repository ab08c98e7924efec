"""The run-config guard: a workdir holds the run of one config.

config.json records the config that started a run; a rerun resumes only
with the same config, except for fields that do not change what is trained
(`_RESUMABLE_CHANGES`) and the recovery fields of every phase the run
trains (phases.recovery_changes), whose changes config_changes.json
records.
"""

import datetime
import json
import os

import jax
import ml_collections
from absl import logging

from diffusion_distillation.runs import workdir as workdir_lib
from diffusion_distillation.training import phases
from diffusion_distillation.utils import errors
from diffusion_distillation.utils import files

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

# Fields added since runs were first recorded, with the value that trains
# as the code did before them: a workdir recorded without one resumes when
# it has that value.
_ADDED_FIELDS = {
    'distill.final_rounds_updates_multiplier': 1,
}


def _flatten(tree, prefix=''):
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f'{prefix}{key}.'))
    return out
  return {prefix[:-1]: tree}


def _matches(key: str, names: tuple) -> bool:
  return any(key == name or key.startswith(name + '.') for name in names)


def check(
    workdir: str,
    config: ml_collections.ConfigDict,
    table: tuple = phases.PHASES,
) -> dict:
  """Refuses a workdir that holds a run of another config.

  `table`: the phases the run trains (a wing's table for its configs).

  Returns:
    {field: (recorded, new)} of the phases.recovery_changes(table) that
    differ:
    they change the training from the step it resumes at, so `record`
    records them.

  Raises:
    InputError naming the first differing field that may not change.
  """
  path = files.as_path(workdir) / workdir_lib.CONFIG
  if not path.exists():
    return {}
  recovery_changes = phases.recovery_changes(table)
  old = _flatten(json.loads(path.read_text()))
  new = _flatten(json.loads(config.to_json_best_effort()))
  recovery = {}
  for key in sorted(set(old) | set(new)):
    before, after = old.get(key, '<absent>'), new.get(key, '<absent>')
    if before == after or _matches(key, _RESUMABLE_CHANGES):
      continue
    if before == '<absent>' and _ADDED_FIELDS.get(key, before) == after:
      continue
    if key in recovery_changes:
      recovery[key] = (before, after)
      continue
    raise errors.InputError(
        f'{workdir} holds a run of a different config: {key} is '
        f'{before!r} there and {after!r} here; use a new --workdir or the '
        'same config.'
    )
  return recovery


def record(
    workdir: str, config: ml_collections.ConfigDict, changes: dict = None
):
  """Writes config.json into a new workdir; with `changes` (recovery fields
  `check` accepted), logs them, rewrites it and appends the change
  to config_changes.json (process 0)."""
  for field, (before, after) in (changes or {}).items():
    logging.warning(
        'Resuming with %s=%r (it was %r); recorded in %s',
        field,
        after,
        before,
        os.path.join(workdir, workdir_lib.CONFIG_CHANGES),
    )
  directory = files.as_path(workdir)
  path = directory / workdir_lib.CONFIG
  if jax.process_index() != 0 or (path.exists() and not changes):
    return
  directory.mkdir(parents=True, exist_ok=True)
  if changes:
    log = directory / workdir_lib.CONFIG_CHANGES
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
