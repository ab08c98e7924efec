"""The distillation rounds' lengths, and a workdir recorded before a config
field existed."""

import json

import pytest

from configs import cifar10
from configs import digits
from diffusion_distillation import pipeline
from diffusion_distillation.runs import run_config
from diffusion_distillation.runs import workdir as workdir_lib
from diffusion_distillation.utils import errors


def test_rounds_have_steps_per_round_updates_by_default():
  config = digits.get_config()
  assert pipeline.round_step_counts(config) == [32, 16, 8, 4, 2, 1]
  assert pipeline.round_updates(config) == [150] * 6


def test_the_multiplier_lengthens_the_rounds_to_two_and_one_step():
  # The paper's section 5.2: 50k updates per round, 100k for 2 and 1 step.
  config = cifar10.get_config()
  config.distill.final_rounds_updates_multiplier = 2
  counts = pipeline.round_step_counts(config)
  updates = pipeline.round_updates(config)
  assert counts[-3:] == [4, 2, 1]
  assert updates == [50_000] * (len(counts) - 2) + [100_000] * 2


def test_a_chain_that_stops_at_four_steps_has_no_final_rounds():
  config = digits.get_config()
  config.distill.update(end_num_steps=4, final_rounds_updates_multiplier=3)
  assert pipeline.round_updates(config) == [150] * 4


def _record_without_multiplier(workdir, config):
  recorded = json.loads(config.to_json_best_effort())
  del recorded['distill']['final_rounds_updates_multiplier']
  (workdir / workdir_lib.CONFIG).write_text(json.dumps(recorded))


def test_a_workdir_recorded_before_the_multiplier_resumes_at_one(tmp_path):
  config = digits.get_config()
  _record_without_multiplier(tmp_path, config)
  assert run_config.check(str(tmp_path), config) == {}


def test_a_workdir_recorded_before_the_multiplier_refuses_another(tmp_path):
  config = digits.get_config()
  _record_without_multiplier(tmp_path, config)
  config.distill.final_rounds_updates_multiplier = 2
  with pytest.raises(
      errors.InputError,
      match='distill.final_rounds_updates_multiplier is .<absent>. there',
  ):
    run_config.check(str(tmp_path), config)
