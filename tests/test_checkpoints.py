"""training/checkpoints.py: corrupt, empty and half-written checkpoints.
A checkpoint that does not restore is moved aside (never deleted), named by
its cause in one line, and the one before is used."""

import os

import pytest

from diffusion_distillation import pipeline
from diffusion_distillation.training import checkpoints
from tests.helpers import SHORT_TEACHER
from tests.helpers import assert_trees_close
from tests.helpers import saved_params
from tests.helpers import tiny_config


def _truncate_largest_file(directory):
  sizes = []
  for root, _, names in os.walk(directory):
    sizes += [
        (os.path.getsize(os.path.join(root, n)), os.path.join(root, n))
        for n in names
    ]
  with open(max(sizes)[1], 'r+b') as f:
    f.truncate(10)


# With filterwarnings=error, an echo of orbax's aborted reads that the
# library did not drop (quiet.ABORTED_READS) fails this
# test or a later one.
@pytest.mark.slow
@pytest.mark.parametrize('damage', ['truncated', 'empty'])
def test_a_bad_latest_checkpoint_is_moved_aside_and_the_one_before_used(
    tmp_path, damage, caplog
):
  workdir = str(tmp_path / 'w')
  config = tiny_config(**SHORT_TEACHER)
  reference = str(tmp_path / 'reference')
  pipeline.run_mode(config, reference, 'train')

  pipeline.run_mode(config, workdir, 'train')
  teacher = os.path.join(workdir, 'teacher')
  # Without its final model the teacher resumes from its checkpoints.
  for name in os.listdir(os.path.join(workdir, 'models')):
    os.rename(
        os.path.join(workdir, 'models', name), str(tmp_path / f'old_{name}')
    )
  if damage == 'truncated':
    _truncate_largest_file(os.path.join(teacher, '6', 'state'))
    bad = '6'
  else:
    os.makedirs(os.path.join(teacher, '8'))
    bad = '8'
  pipeline.run_mode(config, workdir, 'train')

  warnings = [
      r.getMessage()
      for r in caplog.records
      if 'does not restore' in r.getMessage()
  ]
  assert len(warnings) == 1 and '\n' not in warnings[0]
  assert f'teacher/{bad} does not restore' in warnings[0]
  aside = os.listdir(os.path.join(workdir, 'teacher.corrupt'))
  assert len(aside) == 1 and aside[0].startswith(f'{bad}-')  # kept, not deleted
  # Resumed from the one before, it ends where an undamaged run ends.
  assert_trees_close(
      saved_params(workdir, 0, config), saved_params(reference, 0, config)
  )


@pytest.mark.slow
def test_half_written_checkpoints_of_a_killed_run_are_cleaned(tmp_path):
  workdir = str(tmp_path / 'w')
  config = tiny_config(**SHORT_TEACHER)
  pipeline.run_mode(config, workdir, 'train')
  tmp_dir = os.path.join(workdir, 'teacher', '4.orbax-checkpoint-tmp-1234')
  os.makedirs(tmp_dir)
  os.rename(os.path.join(workdir, 'models'), str(tmp_path / 'models'))
  pipeline.run_mode(config, workdir, 'train')
  assert not os.path.exists(tmp_dir)


class _DamagedCheckpoints:
  """A CheckpointManager whose one step fails to restore as orbax fails on
  a truncated file: TensorStore's error wrapped in orbax's."""

  def __init__(self, directory):
    self.directory = directory

  def all_steps(self):
    return [4] if (self.directory / '4').exists() else []

  def restore(self, step, args):
    try:
      raise ValueError('OUT_OF_RANGE: Error reading "params.w/0" in OCDBT')
    except ValueError as e:
      raise Exception(
          'Encountered error while reading array index: (slice(0, 3, 1),). '
          'See full TensorStore details: <bound method pybind11_detail_'
          'function_record_v1.spec of TensorStore({\n  "base": ...'
      ) from e

  def reload(self):
    pass


def test_a_checkpoint_that_does_not_restore_is_named_by_its_cause(
    tmp_path, caplog
):
  directory = tmp_path / 'teacher'
  (directory / '4').mkdir(parents=True)
  mngr = _DamagedCheckpoints(directory)
  assert checkpoints.restore_latest(mngr, {}) is None
  (warning,) = [
      r.getMessage() for r in caplog.records if 'restore' in r.getMessage()
  ]
  assert 'ValueError: OUT_OF_RANGE: Error reading "params.w/0"' in warning
  assert 'bound method' not in warning and '\n' not in warning
  assert os.listdir(tmp_path / 'teacher.corrupt')[0].startswith('4-')
