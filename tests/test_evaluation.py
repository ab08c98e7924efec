"""The digits reference network and --mode=eval: what is evaluated against
what, the written results, and the refusals."""

import json
import math
import os
import re

import jax
import numpy as np
import pytest

from diffusion_distillation import config_checks
from diffusion_distillation import data
from diffusion_distillation import errors
from diffusion_distillation import evaluation
from diffusion_distillation import pipeline
from diffusion_distillation import reference_network
from tests.conftest import tiny_config


def test_classifier_training_is_deterministic():
  settings = reference_network.ClassifierSettings(train_steps=20, batch_size=32)
  train = data.load_digits('train')
  first = reference_network.train_classifier(settings, train)
  second = reference_network.train_classifier(settings, train)
  for a, b in zip(
      jax.tree_util.tree_leaves(first), jax.tree_util.tree_leaves(second)
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_reference_network_is_accurate_and_cached():
  network = reference_network.ReferenceNetwork()
  test = data.load_digits('test')
  assert network.accuracy(test.images, test.labels) > 0.95
  assert os.path.exists(network.cache_path)
  again = reference_network.ReferenceNetwork()
  assert not again.trained_now
  np.testing.assert_array_equal(
      network.features(test.images[:16]), again.features(test.images[:16])
  )


def test_plan_covers_teacher_samplers_and_every_student():
  config = tiny_config()
  entries = evaluation.plan(config, [0, 1, 2])
  assert [e.name for e in entries] == [
      'teacher_ddim_1',
      'teacher_ddim_4',
      'teacher_ancestral_4',
      'student_1',
      'student_2',
  ]
  assert [e.name for e in evaluation.plan(config, [2, 4])] == [
      'student_2',
      'student_4',
  ]


def test_each_student_is_compared_with_the_model_it_was_distilled_from():
  config = tiny_config()  # distills 4 -> 2 -> 1
  models = [0, 1, 2]
  from_ = lambda n: evaluation.distilled_from(
      evaluation.Entry(n, 'ddim', n), config, models
  )
  assert from_(1) == evaluation.Entry(2, 'ddim', 2)
  # The first round's teacher is the continuous-time teacher at 4 steps.
  assert from_(2) == evaluation.Entry(0, 'ddim', 4)
  assert (
      evaluation.distilled_from(evaluation.Entry(0, 'ddim', 4), config, models)
      is None
  )
  assert (
      evaluation.distilled_from(evaluation.Entry(2, 'ddim', 2), config, [2])
      is None
  )


def _results():
  row = lambda model_steps, method, n, fd: dict(
      model_steps=model_steps,
      method=method,
      num_steps=n,
      name='x',
      fd=fd,
      class_accuracy=0.5,
      classifier_score=2.0,
      distilled_from=None,
      fidelity_to_teacher=(
          {'mse': 0.0, 'psnr': math.inf} if model_steps else None
      ),
      fidelity_to_reference=None,
      seconds=1.0,
  )
  return {
      'entries': [
          row(0, 'ddim', 1, 9.0),
          row(0, 'ddim', 4, 3.0),
          row(0, 'ancestral', 4, 5.0),
          row(1, 'ddim', 1, 4.0),
      ],
      'real_vs_real_fd': 0.5,
      'real_vs_real_count': 20,
      'real_test_count': 359,
      'num_samples': 20,
      'reference_network': {'test_accuracy': 0.99},
  }


def test_written_results_table_and_plot(tmp_path):
  paths = evaluation.write_results(_results(), str(tmp_path))
  with open(paths['results.json']) as f:
    written = json.load(f)
  # An identical student gives PSNR +inf, which strict JSON cannot hold.
  assert written['entries'][3]['fidelity_to_teacher']['psnr'] == 'inf'
  with open(paths['results.md']) as f:
    table = f.read().splitlines()
  assert table[2] == '| 1 | 4.000 | 9.000 |  | 0.500 | 0.500 | inf |'
  assert table[3].startswith('| 4 |  | 3.000 | 5.000 |')
  assert os.path.getsize(paths['fd_vs_steps.png']) > 1000


@pytest.mark.parametrize(
    'overrides,message',
    [
        ({'eval.num_samples': 1}, 'eval.num_samples=1'),
        ({'eval.teacher_num_steps': (0, 4)}, 'eval.teacher_num_steps=(0, 4)'),
        ({'eval.batch_size': 0}, 'eval.batch_size=0'),
    ],
)
def test_bad_eval_settings_are_refused(overrides, message):
  with pytest.raises(errors.InputError, match=re.escape(message)):
    config_checks.check_config(tiny_config(**overrides))


def test_eval_without_models_is_refused(tmp_path):
  with pytest.raises(errors.InputError, match='No models in'):
    pipeline.run_mode(tiny_config(), str(tmp_path / 'empty'), 'eval')
