"""The workdir: its layout, the models it keeps, and the run-config guard.

Layout (its folder names are spelled here, but for the checkpoint folders,
which the phase table names: training/phases.py):
  config.json           the config that started the run (guards resumption)
  config_changes.json   recovery changes accepted on resume (run_config.py)
  teacher/<step>/       periodic teacher TrainStates (bounded number kept)
  distill/<step>/       periodic student TrainStates, step counted over all
                        rounds (bounded number kept)
  <folder>.corrupt/     checkpoints that did not restore, moved aside
  models/<N>/           final EMA parameters of each model, kept forever:
                        N = 0 is the continuous-time teacher, N > 0 the
                        student that samples in N steps
  samples/              samples_<N>.npz, samples_<N>_teacher.npz and their
                        grids
  eval/                 evaluation results

A wing adds its own folders through a `Workdir` subclass (the guided
wing's guide/ and models_guide/: diffusion_distillation/guided/workdir.py).

Module functions take a path and work without a config (tests, notebooks,
the release importer); `Workdir` binds one to a run's config and mesh, so
that a model loads in one short call, replicated, checked against the
config's network. What config.json guards: run_config.py.
"""

import functools
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from diffusion_distillation import network as network_lib
from diffusion_distillation.training import checkpoints
from diffusion_distillation.utils import errors
from diffusion_distillation.utils import files
from diffusion_distillation.utils import sharding as sharding_lib

MODELS = 'models'
SAMPLES = 'samples'
EVAL = 'eval'
CONFIG = 'config.json'
CONFIG_CHANGES = 'config_changes.json'

# The one text of every missing-model error, and what each remedy says.
_MISSING = 'Missing {what}: {path} does not exist; {remedy}.'
_RUN_TRAIN = 'run --mode=train first'
_TEACHER_ELSEWHERE = (
    'or set --config.distill.teacher_checkpoint to a teacher workdir or a '
    'models/<N> directory'
)
_NO_MODELS = 'No models in {path}: run --mode=train ({then}) first.'


def missing_model(what: str, path: str, remedy: str) -> errors.InputError:
  return errors.InputError(_MISSING.format(what=what, path=path, remedy=remedy))


def no_models(workdir: str, *, then: str = 'and distill') -> errors.InputError:
  """The error of a mode that needs at least one saved model; `then`: the
  modes after train that make the others."""
  return errors.InputError(
      _NO_MODELS.format(path=os.path.join(workdir, MODELS), then=then)
  )


def missing_teacher(workdir: str) -> errors.InputError:
  """Distillation without models/0 or distill.teacher_checkpoint."""
  return missing_model(
      'teacher checkpoint',
      os.path.join(workdir, MODELS, '0'),
      f'{_RUN_TRAIN}, {_TEACHER_ELSEWHERE}',
  )


def missing_trained_model(what: str, path: str) -> errors.InputError:
  """A missing model that --mode=train makes."""
  return missing_model(what, path, _RUN_TRAIN)


def models_dir(workdir: str) -> str:
  return os.path.join(workdir, MODELS)


def samples_dir(workdir: str) -> str:
  return os.path.join(workdir, SAMPLES)


def eval_dir(workdir: str) -> str:
  return os.path.join(workdir, EVAL)


def save_model(
    workdir: str,
    num_sample_steps: int,
    params: Any,
    meta: dict,
    *,
    folder: str = MODELS,
):
  """Keeps a finished model (teacher: 0, student: its step count) forever."""
  mngr = checkpoints.manager(os.path.join(workdir, folder), max_to_keep=None)
  checkpoints.save(
      mngr,
      num_sample_steps,
      {'params': params},
      dict(meta, num_sample_steps=num_sample_steps),
  )
  mngr.close()


def saved_models(workdir: str, *, folder: str = MODELS) -> list:
  """Step counts of the models saved in `workdir`, ascending."""
  directory = os.path.join(workdir, folder)
  if not files.as_path(directory).is_dir():
    return []
  mngr = checkpoints.manager(directory, max_to_keep=None)
  steps = sorted(mngr.all_steps())
  mngr.close()
  return steps


def model_meta(
    workdir: str, num_sample_steps: int, *, folder: str = MODELS
) -> dict:
  """The JSON metadata saved with a model, without its parameters (e.g.
  'seconds' it took to train)."""
  mngr = checkpoints.manager(os.path.join(workdir, folder), max_to_keep=None)
  meta = mngr.restore(
      num_sample_steps, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
  )['meta']
  mngr.close()
  return meta


def resolve_model_path(path: str, num_sample_steps: int = 0) -> tuple:
  """(models directory, step) for a workdir or a models/<N> directory."""
  path = files.as_path(path)
  if (path / MODELS).is_dir():
    return str(path / MODELS), num_sample_steps
  if path.name.isdigit() and path.is_dir():
    return str(path.parent), int(path.name)
  raise errors.InputError(
      f'No model checkpoint at {path}: give a workdir that holds {MODELS}/ '
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
    sharding: where to place the parameters (e.g. replicated on a
      mesh); default: this process's first device.
    source: what the path is, for error messages ('teacher checkpoint').

  Returns:
    (params, meta).

  Raises:
    InputError when the checkpoint is missing or does not fit the network.
  """
  directory, step = resolve_model_path(path, num_sample_steps)
  if not (files.as_path(directory) / str(step)).is_dir():
    raise missing_model(
        source,
        f'{directory}/{step}',
        'train it first (--mode=train) or point the config at an existing one',
    )
  mngr = checkpoints.manager(directory, max_to_keep=None)
  metadata = mngr.item_metadata(step)['state']['params']
  check_param_shapes(metadata, abstract_params, f'{source} {directory}/{step}')
  if sharding is None:
    # Not the saved shardings: they name the devices of the run that wrote
    # the model (e.g. all hosts of a TPU slice).
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = sharding_lib.placed_shapes(abstract_params, sharding)
  params, meta = checkpoints.restore(mngr, step, {'params': target})
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


class Workdir:
  """A run's workdir bound to its config and mesh: its folders, and the
  models it holds, loaded replicated on the mesh and checked against the
  config's network.

  `path` is the workdir itself. A wing's subclass adds its own models
  (the guided wing: guided/workdir.py).
  """

  def __init__(self, path: str, config: ml_collections.ConfigDict, mesh):
    self.path = path
    self._config = config
    self.replicated = sharding_lib.replicated(mesh)

  @property
  def models_dir(self) -> str:
    return models_dir(self.path)

  @property
  def samples_dir(self) -> str:
    return samples_dir(self.path)

  @property
  def eval_dir(self) -> str:
    return eval_dir(self.path)

  def checkpoints_dir(self, folder: str) -> str:
    """Where a phase keeps its periodic checkpoints."""
    return os.path.join(self.path, folder)

  def _shapes(self, guidance_embedding: bool | None):
    network = network_lib.build_network(
        self._config, dropout=0.0, guidance_embedding=guidance_embedding
    )
    return sharding_lib.placed_shapes(
        network_lib.abstract_params(network, self._config), self.replicated
    )

  @functools.cached_property
  def abstract_params(self):
    """The parameter shapes of the config's network, replicated."""
    return self._shapes(None)

  @property
  def teacher_abstract_params(self):
    """The teacher's parameter shapes, replicated."""
    return self.abstract_params

  def models(self) -> list:
    """Step counts of the saved models, ascending (0: the teacher)."""
    return saved_models(self.path)

  def load(self, num_sample_steps: int, *, source: str = 'model'):
    """The parameters of models/<num_sample_steps> (0: the teacher)."""
    if num_sample_steps == 0:
      return self.load_teacher()
    return self.load_from(
        self.path, num_sample_steps=num_sample_steps, source=source
    )[0]

  def load_from(
      self, path: str, *, num_sample_steps: int = 0, source: str = 'model'
  ) -> tuple:
    """(params, meta) of a model shaped as `abstract_params` at `path` (a
    workdir or a models/<N> directory, e.g. distill.teacher_checkpoint)."""
    return load_model(
        path,
        self.abstract_params,
        num_sample_steps=num_sample_steps,
        sharding=self.replicated,
        source=source,
    )

  def missing_teacher(self) -> errors.InputError:
    """The error of a phase that needs models/0 and finds none."""
    return missing_teacher(self.path)

  def no_models(self) -> errors.InputError:
    """The error of a mode that needs a saved model and finds none."""
    return no_models(self.path)

  def load_teacher(self):
    """The teacher, models/0."""
    if 0 not in self.models():
      raise self.missing_teacher()
    return load_model(
        self.path,
        self.teacher_abstract_params,
        sharding=self.replicated,
        source='teacher',
    )[0]

  def save_model(self, num_sample_steps: int, params, meta: dict):
    save_model(self.path, num_sample_steps, params, meta)
