"""configs/fashion_mnist.py end to end on the real data, offline: the main
command trains, distills and samples a tiny version of the recipe (the
benchmark's --quick budget), then the quality benchmark's --quick variant
scores that same workdir (it reuses the trained models) against the test
images in its reference classifier's features.

Skipped unless Debian's dataset-fashion-mnist is installed (CI installs it).
"""

import json
import os

import ml_collections
import numpy as np
import pytest

from benchmarks import quality_vs_steps
from configs import fashion_mnist
from tests.helpers import REPO
from tests.helpers import needs_debian_fashion_mnist
from tests.helpers import run_python

pytestmark = [pytest.mark.slow, needs_debian_fashion_mnist]


def _flags(base, changed, prefix='--config.'):
  """The --config.a.b=value flags that turn config `base` into `changed`."""
  flags = []
  for key, value in changed.items():
    if isinstance(value, ml_collections.ConfigDict):
      flags += _flags(base[key], value, f'{prefix}{key}.')
    elif key not in base or base[key] != value:
      flags.append(f'{prefix}{key}={value}')
  return flags


def test_fashion_mnist_trains_distills_samples_and_scores(
    fashion_mnist_data_dir, tmp_path
):
  quick = quality_vs_steps.fashion_mnist_quick_overrides(
      fashion_mnist.get_config()
  )
  quick.dataset.data_dir = fashion_mnist_data_dir
  overrides = _flags(fashion_mnist.get_config(), quick)
  workdir = str(tmp_path / 'run')
  config = f'--config={REPO}/configs/fashion_mnist.py'
  result = run_python([
      '-m',
      'diffusion_distillation.main',
      config,
      f'--workdir={workdir}',
      *overrides,
  ])
  assert result.returncode == 0, result.stderr[-4000:]
  assert sorted(os.listdir(os.path.join(workdir, 'models'))) == ['0', '1', '2']
  samples = np.load(os.path.join(workdir, 'samples', 'samples_1.npz'))
  assert samples['arr_0'].shape == (50, 28, 28, 1)
  assert samples['arr_0'].dtype == np.uint8

  result = run_python([
      '-m',
      'benchmarks.quality_vs_steps',
      config,
      '--quick',
      f'--config.dataset.data_dir={fashion_mnist_data_dir}',
      f'--workdir={workdir}',
      f'--out={tmp_path}',
  ])
  assert result.returncode == 0, result.stderr[-4000:]
  with open(tmp_path / 'fashion_mnist_quick.json') as f:
    summary = json.load(f)
  results = summary['eval']
  assert summary['dataset'] == 'fashion_mnist'
  assert results['reference_network']['name'] == 'fashion_mnist_classifier'
  assert results['real_test_count'] == 10_000
  assert results['real_vs_real_count'] == 50
  assert 0 < results['real_vs_real_fd'] < results['entries'][0]['fd']
  names = [row['name'] for row in results['entries']]
  assert names == [
      'teacher_ddim_1',
      'teacher_ddim_2',
      'teacher_ddim_4',
      'teacher_ddim_8',
      'teacher_ancestral_4',
      'student_1',
      'student_2',
  ]
  for row in results['entries']:
    assert row['fd'] > 0 and 0 <= row['precision'] <= 1
    assert 0 <= row['recall'] <= 1 and row['class_accuracy'] is None
    adm = np.load(
        os.path.join(workdir, 'eval', 'samples', row['name'] + '.npz')
    )
    assert adm['arr_0'].shape == (50, 28, 28, 3)  # RGB, as Inception reads
    np.testing.assert_array_equal(adm['arr_0'][..., 0], adm['arr_0'][..., 2])
  targets = summary['targets']
  assert set(quality_vs_steps.FASHION_MNIST_TARGETS) <= set(targets)
  assert targets['distilled_1_over_best_teacher_fd']['paper_cifar10'] == (
      pytest.approx(9.12 / 2.4)
  )
  for suffix in ('png', 'md'):
    assert (tmp_path / f'fashion_mnist_quick.{suffix}').stat().st_size > 0
