"""Shared test set-up: a persistent XLA compilation cache and tiny networks."""

import os

import jax
import jax.numpy as jnp
import pytest

# Compiling a U-Net step takes seconds on CPU; caching compiled executables
# across test processes (and CI runs on the same machine) saves most of it.
jax.config.update(
    'jax_compilation_cache_dir',
    os.environ.get('DD_TEST_COMPILATION_CACHE',
                   os.path.expanduser('~/.cache/diffusion_distillation/xla')))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)


def randomize_params(params, rng, scale=0.2):
  """Replaces every parameter by noise: a fresh U-Net outputs exactly zero."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(rng, len(leaves))
  return jax.tree_util.tree_unflatten(treedef, [
      scale * jax.random.normal(k, leaf.shape, leaf.dtype)
      for k, leaf in zip(keys, leaves)])


@pytest.fixture(scope='session')
def tiny_unet_kwargs():
  return dict(ch=8, emb_ch=16, ch_mult=(1, 2), num_res_blocks=1,
              attn_resolutions=(4,), num_heads=1, dropout=0.1,
              logsnr_input_type='inv_cos', resblock_resample=True,
              num_groups=4)
