"""Importing Google's released checkpoints: files in the release's layout
(msgpack of its flax.optim train state) become models that sample and
distill; mismatches and unreadable files are refused in one line."""

import os

import flax
import jax
import numpy as np
import pytest

from diffusion_distillation import pipeline
from diffusion_distillation import release_import
from diffusion_distillation.runs import workdir as workdir_lib
from diffusion_distillation.utils import errors
from tests.helpers import TEST_CONFIG
from tests.helpers import randomize_params
from tests.helpers import run_python
from tests.helpers import tiny_config


def _random_params(config, seed):
  shapes = release_import.network_param_shapes(config)
  return jax.tree_util.tree_map(
      np.asarray, randomize_params(shapes, jax.random.key(seed))
  )


def _release_state(*, target, ema_params, num_sample_steps, step=1000):
  """The state dict `flax.serialization.to_bytes` made of the release's
  TrainState(step, flax.optim.Optimizer, ema_params, num_sample_steps)."""
  state = {
      'step': step,
      'optimizer': {
          'target': target,
          'state': {
              'step': np.asarray(step, np.int32),
              'param_states': jax.tree_util.tree_map(
                  lambda p: {
                      'grad_ema': np.zeros_like(p),
                      'grad_sq_ema': np.ones_like(p),
                  },
                  target,
              ),
          },
      },
      'ema_params': ema_params,
      'num_sample_steps': num_sample_steps,
  }
  return {key: value for key, value in state.items() if value is not None}


def _write(path, state):
  with open(path, 'wb') as f:
    f.write(flax.serialization.msgpack_serialize(state))
  return str(path)


def _saved_params(workdir, config, num_sample_steps):
  params, meta = workdir_lib.load_model(
      workdir,
      release_import.network_param_shapes(config),
      num_sample_steps=num_sample_steps,
  )
  return jax.tree_util.tree_map(np.asarray, params), meta


def _assert_trees_equal(a, b):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_imported_teacher_samples_and_is_distilled(tmp_path):
  # One distillation round (4 -> 2 steps) is enough to show it is taken.
  config = tiny_config(**{'distill.end_num_steps': 2})
  ema, target = _random_params(config, 1), _random_params(config, 2)
  path = _write(
      tmp_path / 'cifar_original',
      _release_state(target=target, ema_params=ema, num_sample_steps=0),
  )
  workdir = str(tmp_path / 'workdir')

  assert release_import.import_release_checkpoint(path, config, workdir) == 0
  params, meta = _saved_params(workdir, config, 0)
  _assert_trees_equal(params, ema)
  assert meta == {
      'imported_from': path,
      'imported_params': 'ema_params',
      'release_step': 1000,
      'release_num_sample_steps': 0,
      'num_sample_steps': 0,
  }

  pipeline.run_mode(config, workdir, 'sample')
  with np.load(os.path.join(workdir, 'samples', 'samples_4_teacher.npz')) as f:
    assert f['arr_0'].shape == (8, 8, 8, 1)
  pipeline.run_mode(config, workdir, 'distill')
  assert workdir_lib.saved_models(workdir) == [0, 2]


@pytest.mark.slow
def test_command_line_imports_a_student_and_never_overwrites(tmp_path):
  config = tiny_config()
  ema, target = _random_params(config, 1), _random_params(config, 2)
  path = _write(
      tmp_path / 'cifar_4',
      _release_state(target=target, ema_params=ema, num_sample_steps=4),
  )
  workdir = str(tmp_path / 'workdir')
  command = [
      '-m',
      'diffusion_distillation.release_import',
      f'--config={TEST_CONFIG}',
      f'--checkpoint={path}',
      f'--workdir={workdir}',
      '--use_ema=false',
  ]

  result = run_python(command)
  assert result.returncode == 0, result.stderr[-2000:]
  params, meta = _saved_params(workdir, config, 4)
  _assert_trees_equal(params, target)
  assert meta['num_sample_steps'] == 4
  assert meta['imported_params'] == 'optimizer.target'

  result = run_python(command)
  assert result.returncode == 2
  last_line = result.stderr.strip().splitlines()[-1]
  assert last_line == (
      f'error: {workdir}/models/4 already exists and is kept: '
      'import into another --workdir, or save under another '
      '--num_sample_steps.'
  )
  _assert_trees_equal(_saved_params(workdir, config, 4)[0], target)

  # The caller may save it under another step count.
  assert (
      release_import.import_release_checkpoint(
          path, config, workdir, num_sample_steps=0
      )
      == 0
  )
  _assert_trees_equal(_saved_params(workdir, config, 0)[0], ema)


def test_release_params_choice_and_defaults():
  ema = {'conv_in': {'bias': np.zeros(2, np.float32)}}
  target = {'conv_in': {'bias': np.ones(2, np.float32)}}
  state = _release_state(
      target=target, ema_params=ema, num_sample_steps=np.asarray(8)
  )
  params, num_sample_steps = release_import.release_params(state)
  assert params is ema and num_sample_steps == 8
  params, _ = release_import.release_params(state, use_ema=False)
  assert params is target
  # Without ema_params, or num_sample_steps: the target and 0.
  state = _release_state(target=target, ema_params=None, num_sample_steps=None)
  params, num_sample_steps = release_import.release_params(state)
  assert params is target and num_sample_steps == 0
  with pytest.raises(errors.InputError, match='no optimizer.target'):
    release_import.release_params({'ema_params': ema}, use_ema=False)


@pytest.mark.parametrize(
    'change, message',
    [
        (
            'wrong_shape',
            r'parameter conv_in/kernel has shape \(3, 3, 1, 4\) there '
            r'and \(3, 3, 1, 8\) here',
        ),
        (
            'missing',
            r'lacks parameter mid.attn_1/q/kernel \(shape \(16, 1, 16\)\)',
        ),
        ('extra', 'has parameter mid.attn_1/r/kernel that this config'),
        (
            'not_an_array',
            'parameter dense0/bias of type str, not a float array',
        ),
    ],
)
def test_mismatched_parameters_are_refused_by_name(tmp_path, change, message):
  config = tiny_config()
  ema = _random_params(config, 1)
  attn = ema['mid.attn_1']
  if change == 'wrong_shape':
    ema['conv_in']['kernel'] = np.zeros((3, 3, 1, 4), np.float32)
  elif change == 'missing':
    del attn['q']['kernel']
  elif change == 'extra':
    attn['r'] = {'kernel': attn['q']['kernel']}
  else:
    ema['dense0']['bias'] = 'zeros'
  path = _write(
      tmp_path / 'ckpt',
      _release_state(
          target=_random_params(config, 2), ema_params=ema, num_sample_steps=0
      ),
  )
  workdir = tmp_path / 'workdir'
  with pytest.raises(errors.InputError, match=message) as error:
    release_import.import_release_checkpoint(path, config, str(workdir))
  assert f'release checkpoint {path}' in str(error.value)
  assert not workdir.exists()  # nothing written


def test_unreadable_files_give_one_line_errors(tmp_path):
  (tmp_path / 'garbage').write_bytes(b'not msgpack at all')
  not_release = _write(
      tmp_path / 'params_only',
      {'params': {'conv_in': {'bias': np.zeros(2)}}, 'step': 3},
  )
  cases = {
      str(tmp_path / 'missing'): 'the file does not exist',
      str(tmp_path): 'is a directory; give the release checkpoint file',
      str(tmp_path / 'garbage'): 'is not a flax msgpack file',
      not_release: r"found top-level keys \['params', 'step'\]",
  }
  for path, message in cases.items():
    with pytest.raises(errors.InputError, match=message) as error:
      release_import.read_release_checkpoint(path)
    assert '\n' not in str(error.value)
  with pytest.raises(errors.InputError, match='found a list'):
    release_import.read_release_checkpoint(_write(tmp_path / 'list', [1, 2]))


def _cifar10_config(**model):
  """The release's CIFAR-10 network: 32x32x3, unconditional, x."""
  config = tiny_config(**{
      'dataset.image_size': 32,
      'dataset.channels': 3,
      'dataset.class_conditional': False,
      'dataset.num_classes': 1,
      'model.mean_type': 'x',
  })
  config.model.update(
      dict(
          ch=256,
          emb_ch=1024,
          ch_mult=(1, 1, 1),
          num_res_blocks=3,
          attn_resolutions=(8, 16),
          num_heads=1,
          head_dim=None,
          num_groups=32,
      ),
      **model,
  )
  return config


def test_cifar10_release_layout_fits_the_paper_network():
  shapes = release_import.network_param_shapes(_cifar10_config())

  def placeholder(path, leaf):
    # A zero-strided view: the full shape, no memory.
    name = '/'.join(k.key for k in path)
    shape = leaf.shape
    if 'norm' in name:  # GroupNorm as Flax before 0.3.6 stored it
      shape = (1, 1, 1) + shape
    return np.broadcast_to(np.float32(0), shape)

  release = jax.tree_util.tree_map_with_path(placeholder, shapes)
  assert release['mid.block_1']['norm1']['scale'].shape == (1, 1, 1, 256)
  state = _release_state(target=release, ema_params=release, num_sample_steps=8)
  params, num_sample_steps = release_import.release_params(state)
  assert num_sample_steps == 8

  fitted = release_import.fit_params(params, shapes, source='cifar_8')
  workdir_lib.check_param_shapes(fitted, shapes, 'fitted')
  assert fitted['mid.block_1']['norm1']['scale'].shape == (256,)
  assert sum(leaf.size for leaf in jax.tree_util.tree_leaves(fitted)) == (
      60_004_099
  )

  # A config whose network differs is refused by name, e.g. mean_type
  # 'both' (6 output channels) for the release's 'x' CIFAR-10 model.
  with pytest.raises(
      errors.InputError,
      match=r'conv_out/bias has shape \(3,\) there and \(6,\)',
  ):
    release_import.fit_params(
        params,
        release_import.network_param_shapes(_cifar10_config(mean_type='both')),
        source='cifar_8',
    )


def test_a_release_file_holding_nan_is_refused(tmp_path):
  config = tiny_config()
  ema = _random_params(config, 1)
  ema['conv_in']['bias'] = np.full_like(ema['conv_in']['bias'], np.nan)
  path = _write(
      tmp_path / 'nan_release',
      _release_state(target=ema, ema_params=ema, num_sample_steps=0),
  )
  workdir = tmp_path / 'w'
  with pytest.raises(
      errors.InputError, match='parameter conv_in/bias holds NaN or inf'
  ):
    release_import.import_release_checkpoint(path, config, str(workdir))
  assert not workdir.exists()
