"""--mode=eval: the digits reference network; what is evaluated against what,
the written results, and the refusals; the tfds datasets' InceptionV3 eval
end to end on mock CIFAR-10."""

import importlib
import json
import math
import os
import re

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import cifar10
from diffusion_distillation import network as network_lib
from diffusion_distillation import pipeline
from diffusion_distillation.data import datasets
from diffusion_distillation.data import input_pipeline
from diffusion_distillation.evaluation import inception
from diffusion_distillation.evaluation import loop as evaluation_loop
from diffusion_distillation.evaluation import reference_network
from diffusion_distillation.evaluation import scorers as scorers_lib
from diffusion_distillation.runs import config_checks
from diffusion_distillation.runs import workdir as workdir_lib
from diffusion_distillation.utils import errors
from tests.helpers import randomize_params
from tests.helpers import tiny_config


def test_classifier_training_is_deterministic():
  settings = reference_network.ClassifierSettings(train_steps=20, batch_size=32)
  train = datasets.load_digits('train')
  first = reference_network.train_classifier(settings, train)
  second = reference_network.train_classifier(settings, train)
  for a, b in zip(
      jax.tree_util.tree_leaves(first), jax.tree_util.tree_leaves(second)
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_reference_network_is_accurate_and_cached():
  network = reference_network.ReferenceNetwork()
  test = datasets.load_digits('test')
  assert network.accuracy(test.images, test.labels) > 0.95
  assert os.path.exists(network.cache_path)
  again = reference_network.ReferenceNetwork()
  assert not again.trained_now
  np.testing.assert_array_equal(
      network.features(test.images[:16]), again.features(test.images[:16])
  )


def test_plan_covers_teacher_samplers_and_every_student():
  config = tiny_config()
  entries = evaluation_loop.plan(config, [0, 1, 2])
  assert [e.name for e in entries] == [
      'teacher_ddim_1',
      'teacher_ddim_4',
      'teacher_ancestral_4',
      'student_1',
      'student_2',
  ]
  assert [e.name for e in evaluation_loop.plan(config, [2, 4])] == [
      'student_2',
      'student_4',
  ]


def test_each_student_is_compared_with_the_model_it_was_distilled_from():
  config = tiny_config()  # distills 4 -> 2 -> 1
  models = [0, 1, 2]
  from_ = lambda n: evaluation_loop.distilled_from(
      evaluation_loop.Entry(n, 'ddim', n), config, models
  )
  assert from_(1) == evaluation_loop.Entry(2, 'ddim', 2)
  # The first round's teacher is the continuous-time teacher at 4 steps.
  assert from_(2) == evaluation_loop.Entry(0, 'ddim', 4)
  assert (
      evaluation_loop.distilled_from(
          evaluation_loop.Entry(0, 'ddim', 4), config, models
      )
      is None
  )
  assert (
      evaluation_loop.distilled_from(
          evaluation_loop.Entry(2, 'ddim', 2), config, [2]
      )
      is None
  )


def _results():
  row = lambda model_steps, method, n, fd: dict(
      model_steps=model_steps,
      method=method,
      num_steps=n,
      name='x',
      fd=fd,
      precision=0.8,
      recall=0.7,
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
      'reference_network': {'name': 'digits_classifier', 'test_accuracy': 0.99},
  }


def test_written_results_table_and_plot(tmp_path):
  paths = evaluation_loop.write_results(_results(), str(tmp_path))
  with open(paths['results.json']) as f:
    written = json.load(f)
  # An identical student gives PSNR +inf, which strict JSON cannot hold.
  assert written['entries'][3]['fidelity_to_teacher']['psnr'] == 'inf'
  with open(paths['results.md']) as f:
    table = f.read().splitlines()
  assert table[2] == (
      '| 1 | 4.000 | 9.000 |  | 0.800 | 0.700 | 0.800 | 0.700 | 0.500 | 0.500 '
      '| inf |'
  )
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


# ----------------------------------------------------------------------------
# The tfds datasets: InceptionV3 FID, Inception Score, precision and recall.


def _cifar10_config(**eval_overrides):
  """configs/test.py's network on CIFAR-10's data and eval settings."""
  config = tiny_config(**{
      'dataset.name': 'cifar10',
      'dataset.image_size': 32,
      'dataset.channels': 3,
      'dataset.class_conditional': False,
      'model.ch_mult': (1,),
      'model.attn_resolutions': (),  # compiles fast
  })
  config.dataset.data_dir = ''
  config.dataset.shuffle_buffer = 64
  eval_config = cifar10.get_config().eval
  eval_config.update(
      num_samples=8,
      batch_size=8,
      teacher_num_steps=(1,),
      reference_num_images=16,
  )
  eval_config.update(eval_overrides)
  config.eval = eval_config
  return config


def test_paper_eval_settings():
  settings = cifar10.get_config().eval
  assert settings.num_samples == 50_000  # the paper's
  assert settings.reference_num_images == 50_000  # CIFAR-10's train split
  assert settings.inception_weights == ''  # the user's file
  for name in ('imagenet64', 'lsun_bedroom', 'lsun_church_distill'):
    config = importlib.import_module(f'configs.{name}').get_config()
    assert config.eval.reference_num_images == 50_000
    config_checks.check_eval(config.eval, num_devices=8)


def test_eval_without_inception_weights_names_the_setting(tmp_path):
  with pytest.raises(
      errors.InputError,
      match=re.escape(
          'eval.inception_weights is not set: --mode=eval on cifar10 '
          'measures FID with InceptionV3 weights that you supply (nothing is '
          'downloaded); convert the ADM evaluator'
      ),
  ) as caught:
    pipeline.run_mode(_cifar10_config(), str(tmp_path / 'w'), 'eval')
  assert '\n' not in str(caught.value)
  assert '--config.eval.inception_weights=PATH' in str(caught.value)


@pytest.mark.parametrize('field', ['inception_weights', 'reference_stats'])
def test_eval_files_that_do_not_exist_are_refused_before_writing(
    tmp_path, field
):
  weights = str(tmp_path / 'inception_fid.npz')
  inception.save_params(inception.random_params(0), weights)
  config = _cifar10_config(inception_weights=weights)
  config.eval[field] = str(tmp_path / 'missing.npz')
  workdir = tmp_path / 'w'
  with pytest.raises(
      errors.InputError,
      match=re.escape(f'eval.{field}={tmp_path}/missing.npz does not exist'),
  ):
    pipeline.run_mode(config, str(workdir), 'eval')
  assert not workdir.exists()


@pytest.mark.parametrize(
    'overrides,message',
    [
        ({'eval.num_samples': 3}, 'eval.num_samples=3: need at least 4'),
        ({'eval.reference_num_images': 2}, 'eval.reference_num_images=2'),
    ],
)
def test_bad_inception_eval_settings_are_refused(overrides, message):
  config = _cifar10_config()
  for key, value in overrides.items():
    config.eval[key.split('.')[1]] = value
  with pytest.raises(errors.InputError, match=re.escape(message)):
    config_checks.check_config(config)


@pytest.mark.slow
def test_cifar10_eval_end_to_end_on_mock_data(tmp_path, monkeypatch):
  weights = str(tmp_path / 'inception_fid.npz')
  inception.save_params(inception.random_params(0), weights)
  config = _cifar10_config(inception_weights=weights)
  workdir = str(tmp_path / 'w')
  network = network_lib.build_network(config, dropout=0.0)
  for steps, seed in ((0, 0), (1, 1), (2, 2)):
    params = network_lib.init_params(network, config, jax.random.key(seed))
    workdir_lib.save_model(
        workdir, steps, randomize_params(params, jax.random.key(seed)), {}
    )
  with tfds.testing.mock_data(num_examples=32):
    results = pipeline.run_mode(config, workdir, 'eval')
  del results
  eval_dir = os.path.join(workdir, 'eval')
  with open(os.path.join(eval_dir, 'results.json')) as f:
    results = json.load(f)
  assert [row['name'] for row in results['entries']] == [
      'teacher_ddim_1',
      'student_1',
      'student_2',
  ]
  for row in results['entries']:
    assert row['fid'] > 0 and row['num_samples'] == 8
    assert 1 <= row['inception_score'] <= inception.NUM_LOGITS
    assert 0 <= row['precision'] <= 1 and 0 <= row['recall'] <= 1
  assert results['reference']['num_images'] == 16
  fingerprint = results['feature_network']['fingerprint']
  cache = os.path.join(eval_dir, f'reference_cifar10_32px_16_{fingerprint}.npz')
  assert results['reference']['path'] == cache
  with np.load(cache) as f:
    assert f['arr_0'].shape == (16, 32, 32, 3) and f['arr_0'].dtype == np.uint8
    assert f['mu'].shape == (2048,) and f['sigma'].shape == (2048, 2048)
  with open(os.path.join(eval_dir, 'results.md')) as f:
    table = f.read().splitlines()
  assert table[0].startswith('| steps | FID distilled | FID distilled (paper)')
  assert table[2].startswith('| 1 | ') and '| 9.12 |' in table[2]
  assert os.path.getsize(os.path.join(eval_dir, 'fd_vs_steps.png')) > 1000
  # A second eval reads the cached statistics: no tfds read.
  monkeypatch.setattr(
      input_pipeline,
      'reference_images',
      lambda *a, **k: pytest.fail('the cache was not used'),
  )
  run = pipeline.Run(config, workdir)
  features = inception.FeatureNetwork(inception.load_params(weights), run.mesh)
  cached = scorers_lib.reference_statistics(run, features)
  assert cached.source == cache and cached.features.shape == (16, 2048)
