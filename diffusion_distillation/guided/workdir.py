"""The guided wing's part of a workdir: stage one's model and the guided
messages, on the core's `Workdir` (runs/workdir.py).

Folders beside the core's:
  guide/<step>/     periodic stage-one TrainStates (phases.GUIDE names it)
  models_guide/0/   the stage-one model (w-conditioned, continuous time),
                    stage two's first teacher

models/0 is the guided teacher, which has no w-embedding; every other
model (the stage-one model, the students) has one.
"""

import functools
import os

from diffusion_distillation.runs import workdir as workdir_lib
from diffusion_distillation.utils import errors
from diffusion_distillation.utils import files

STAGE_ONE_MODELS = 'models_guide'


def stage_one_dir(path: str) -> str:
  return os.path.join(path, STAGE_ONE_MODELS)


def has_stage_one_model(path: str) -> bool:
  return (files.as_path(stage_one_dir(path)) / '0').is_dir()


def stage_one_meta(path: str) -> dict:
  return workdir_lib.model_meta(path, 0, folder=STAGE_ONE_MODELS)


def no_models(path: str) -> errors.InputError:
  return workdir_lib.no_models(path, then='then guide and distill')


def missing_teacher(path: str) -> errors.InputError:
  return workdir_lib.missing_trained_model(
      'guided teacher', os.path.join(workdir_lib.models_dir(path), '0')
  )


def missing_stage_one(path: str) -> errors.InputError:
  return workdir_lib.missing_model(
      'stage-one model',
      os.path.join(stage_one_dir(path), '0'),
      'run --mode=guide first, or set --config.distill.teacher_checkpoint to '
      'a w-conditioned model',
  )


class GuidedWorkdir(workdir_lib.Workdir):
  """A guided run's workdir: the teacher without a w-embedding, and the
  stage-one model."""

  @functools.cached_property
  def teacher_abstract_params(self):
    return self._shapes(False)

  def missing_teacher(self) -> errors.InputError:
    return missing_teacher(self.path)

  def no_models(self) -> errors.InputError:
    return no_models(self.path)

  def missing_stage_one(self) -> errors.InputError:
    return missing_stage_one(self.path)

  def has_stage_one(self) -> bool:
    return has_stage_one_model(self.path)

  def load_stage_one(self):
    """The stage-one model (w-conditioned)."""
    if not self.has_stage_one():
      raise self.missing_stage_one()
    return self.load_from(
        os.path.join(stage_one_dir(self.path), '0'), source='stage-one model'
    )[0]

  def save_stage_one(self, params, meta: dict):
    workdir_lib.save_model(self.path, 0, params, meta, folder=STAGE_ONE_MODELS)
