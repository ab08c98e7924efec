"""The paper's configs: the networks they build (pinned parameter counts), the
paper's values, what each distill config changes; class labels for sampling
from the command line; a CIFAR-10 config training through the real loop on
mock data."""

import importlib
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from diffusion_distillation import network as network_lib
from diffusion_distillation import pipeline
from diffusion_distillation.data import input_pipeline
from diffusion_distillation.runs import workdir as workdir_lib
from tests.helpers import TEST_CONFIG
from tests.helpers import run_python
from tests.helpers import tiny_config


def _config(name):
  return importlib.import_module(f'configs.{name}').get_config()


def _flatten(tree, prefix=''):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


# Pinned as in tests/test_unet.py: a change here changes which released
# checkpoints load. out_ch: 3 for mean_type 'x', 6 for 'both'.
PARAMETER_COUNTS = {
    'cifar10': (60_004_099, 32, 3),
    'imagenet64': (295_905_222, 64, 6),
    'lsun_bedroom': (139_578_502, 128, 6),
    'lsun_church': (139_578_502, 128, 6),
}


@pytest.mark.parametrize('name', sorted(PARAMETER_COUNTS))
def test_paper_network_parameter_count(name):
  config = _config(name)
  network = network_lib.build_network(config, dropout=config.model.dropout)
  params = network_lib.abstract_params(network, config)  # jax.eval_shape
  count = sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))
  print(f'{name}: {count:,} parameters')
  expected_count, size, out_ch = PARAMETER_COUNTS[name]
  assert count == expected_count
  assert config.dataset.image_size == size
  assert params['conv_out']['kernel'].shape[-1] == out_ch
  assert ('class_emb' in params) == (name == 'imagenet64')


# The release's configs (network, optimizer, rounds, data), as fields.
COMMON = {
    'adam.b1': 0.9,
    'adam.b2': 0.999,
    'adam.eps': 1e-8,
    'adam.grad_clip': 1.0,
    'model.mean_loss_weight_type': 'snr_trunc',
    'model.logsnr_input_type': 'inv_cos',
    'model.resblock_resample': True,
    'model.num_res_blocks': 3,
    'model.num_groups': 32,
    'model.logsnr_schedule.name': 'cosine',
    'model.logsnr_schedule.logsnr_min': -20.0,
    'model.logsnr_schedule.logsnr_max': 20.0,
    'train.substeps': 10,
    'train.warmup_steps': 1000,
    'train.ema_decay': 0.9999,
    'distill.substeps': 10,
    'distill.steps_per_round': 50_000,
    'distill.end_num_steps': 1,
    'distill.warmup_steps': 0,
    'distill.weight_decay': 0.0,
    'distill.ema_decay': 0.0,
    'distill.dropout': 0.0,
    'distill.teacher_checkpoint': '',
    'dataset.shuffle_buffer': 50_000,
    'dataset.channels': 3,
    'sample.clip_x': True,
    'sample.sampler': 'ddim',
}
LARGE = {
    'train.batch_size': 2048,
    'train.learning_rate': 3e-4,
    'train.weight_decay': 0.0,
    'distill.batch_size': 2048,
    'distill.learning_rate': 1e-4,
    'distill.start_num_steps': 1024,
    'model.mean_type': 'both',
    'model.dropout': 0.1,
    'model.head_dim': 64,
    'model.num_heads': None,
    'model.emb_ch': 768,
    'model.attn_resolutions': (8, 16, 32),
}
PAPER_VALUES = {
    'cifar10': dict(
        COMMON,
        **{
            'dataset.name': 'cifar10',
            'dataset.class_conditional': False,
            'dataset.image_size': 32,
            'model.ch': 256,
            'model.emb_ch': 1024,
            'model.ch_mult': (1, 1, 1),
            'model.attn_resolutions': (8, 16),
            'model.num_heads': 1,
            'model.head_dim': None,
            'model.dropout': 0.2,
            'model.mean_type': 'x',
            'train.batch_size': 128,
            'train.learning_rate': 2e-4,
            'train.weight_decay': 1e-3,
            'distill.batch_size': 128,
            'distill.learning_rate': 5e-5,
            'distill.start_num_steps': 8192,
        },
    ),
    'imagenet64': dict(
        COMMON,
        **LARGE,
        **{
            'dataset.name': 'imagenet2012',
            'dataset.class_conditional': True,
            'dataset.num_classes': 1000,
            'dataset.image_size': 64,
            'model.ch': 192,
            'model.ch_mult': (1, 2, 3, 4),
        },
    ),
    'lsun_bedroom': dict(
        COMMON,
        **LARGE,
        **{
            'dataset.name': 'lsun/bedroom',
            'dataset.class_conditional': False,
            'dataset.image_size': 128,
            'model.ch': 64,
            'model.ch_mult': (1, 2, 4, 6, 8),
        },
    ),
    'lsun_church': dict(
        COMMON,
        **LARGE,
        **{
            'dataset.name': 'lsun/church_outdoor',
            'dataset.class_conditional': False,
            'dataset.image_size': 128,
            'model.ch': 64,
            'model.ch_mult': (1, 2, 4, 6, 8),
        },
    ),
}
ROUNDS = {
    'cifar10': 13,
    'imagenet64': 10,
    'lsun_bedroom': 10,
    'lsun_church': 10,
}


@pytest.mark.parametrize('name', sorted(PAPER_VALUES))
def test_paper_values(name):
  config = _config(name)
  fields = _flatten(config.to_dict())
  for key, expected in PAPER_VALUES[name].items():
    value = fields[key]
    assert (tuple(value) if isinstance(value, (list, tuple)) else value) == (
        expected
    ), key
  counts = pipeline.round_step_counts(config)
  assert len(counts) == ROUNDS[name] and counts[-1] == 1
  assert config.train.num_steps >= len(counts) * config.distill.steps_per_round


@pytest.mark.parametrize(
    'name,changed',
    [
        ('cifar10', {}),
        ('imagenet64', {'checkpoint.every_secs': (900.0, 1500.0)}),
        ('lsun_bedroom', {'checkpoint.every_secs': (900.0, 1500.0)}),
        ('lsun_church', {'checkpoint.every_secs': (900.0, 1500.0)}),
    ],
)
def test_distill_configs_change_only_what_the_release_changed(name, changed):
  base = _flatten(_config(name).to_dict())
  distill = _flatten(_config(f'{name}_distill').to_dict())
  assert set(base) == set(distill)
  differing = {
      key: (base[key], distill[key])
      for key in base
      if base[key] != distill[key]
  }
  assert differing == changed
  # Only fields a workdir may change between runs: a distill config
  # continues its base config's teacher in the same workdir.
  assert all(key.startswith('checkpoint.') for key in differing)


@pytest.mark.slow
def test_sample_labels_from_the_command_line(tmp_path):
  config = tiny_config()
  workdir = str(tmp_path / 'w')
  network = network_lib.build_network(config, dropout=0.0)
  params = jax.jit(lambda rng: network_lib.init_params(network, config, rng))(
      jax.random.key(0)
  )
  workdir_lib.save_model(workdir, 0, params, {})
  result = run_python([
      '-m',
      'diffusion_distillation.main',
      f'--config={TEST_CONFIG}',
      f'--workdir={workdir}',
      '--mode=sample',
      '--config.sample.labels=(1,2,3)',
      '--config.sample.teacher_num_steps=1',
  ])
  assert result.returncode == 0, result.stderr[-3000:]
  with np.load(os.path.join(workdir, 'samples', 'samples_1_teacher.npz')) as f:
    np.testing.assert_array_equal(f['arr_1'], [1, 2, 3, 1, 2, 3, 1, 2])
    assert f['arr_0'].shape == (8, 8, 8, 1)


@pytest.mark.slow
def test_cifar10_trains_through_the_pipeline_loop(tmp_path, monkeypatch):
  built = []
  original = input_pipeline.train_dataset
  monkeypatch.setattr(
      input_pipeline,
      'train_dataset',
      lambda *a, **k: built.append(k['step']) or original(*a, **k),
  )
  config = tiny_config(**{
      'dataset.name': 'cifar10',
      'dataset.image_size': 32,
      'dataset.channels': 3,
      'dataset.class_conditional': False,
      'dataset.data_dir': '',
      'dataset.shuffle_buffer': 64,
      'model.ch_mult': (1,),
      'model.attn_resolutions': (),  # compiles fast
      'train.num_steps': 2,
      'train.substeps': 1,
      'sample.num_samples': 4,
      'sample.batch_size': 4,
      'sample.teacher_num_steps': 1,
  })
  workdir = str(tmp_path / 'w')
  with tfds.testing.mock_data(num_examples=32):
    pipeline.run_mode(config, workdir, 'train')
  assert built == [0]  # two dispatches of one step: one stream
  assert workdir_lib.saved_models(workdir) == [0]
  network = network_lib.build_network(config, dropout=0.0)
  _, meta = workdir_lib.load_model(
      workdir, network_lib.abstract_params(network, config), num_sample_steps=0
  )
  assert meta['trained_steps'] == config.train.num_steps
  with np.load(os.path.join(workdir, 'samples', 'grid_teacher_1.npz')) as f:
    assert f['arr_0'].shape == (4, 32, 32, 3)
