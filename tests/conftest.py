"""Shared test set-up: a persistent XLA compilation cache and the fixtures.
What tests share besides (configs, runs, comparisons) is in helpers.py."""

import os

# Compiling a U-Net step takes seconds on CPU; caching compiled executables
# across test processes (subprocesses inherit these variables) saves most of
# it. Set before jax is imported.
os.environ.setdefault(
    'JAX_COMPILATION_CACHE_DIR',
    os.path.expanduser('~/.cache/diffusion_distillation/xla'),
)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')

import pytest  # noqa: E402


@pytest.fixture(scope='session')
def tiny_unet_kwargs():
  return dict(
      ch=8,
      emb_ch=16,
      ch_mult=(1, 2),
      num_res_blocks=1,
      attn_resolutions=(4,),
      num_heads=1,
      dropout=0.1,
      logsnr_input_type='inv_cos',
      resblock_resample=True,
      num_groups=4,
  )


@pytest.fixture(scope='session')
def fashion_mnist_data_dir(tmp_path_factory):
  """A tfds data_dir with fashion_mnist prepared from Debian's files, once
  per test session (about 20 s)."""
  from diffusion_distillation.data import prepare

  data_dir = str(tmp_path_factory.mktemp('tfds'))
  prepare.prepare('fashion_mnist', data_dir=data_dir)
  return data_dir
