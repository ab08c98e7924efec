"""The U-Net: shapes and parameter counts of the paper's networks (built
abstractly), the release's parameter names, zero output at init."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_distillation import unet
from tests.helpers import float64
from tests.helpers import randomize_params

# The release's unet.py and configs; out_ch: 3 for mean_type 'x', 6 for 'both'.
PAPER_ARCHITECTURES = {
    'cifar10': (
        32,
        1,
        dict(
            ch=256,
            emb_ch=1024,
            ch_mult=(1, 1, 1),
            num_res_blocks=3,
            attn_resolutions=(8, 16),
            num_heads=1,
            dropout=0.2,
            out_ch=3,
        ),
    ),
    'imagenet64': (
        64,
        1000,
        dict(
            ch=192,
            emb_ch=768,
            ch_mult=(1, 2, 3, 4),
            num_res_blocks=3,
            attn_resolutions=(8, 16, 32),
            head_dim=64,
            dropout=0.1,
            out_ch=6,
        ),
    ),
    'lsun_bedroom128': (
        128,
        1,
        dict(
            ch=64,
            emb_ch=768,
            ch_mult=(1, 2, 4, 6, 8),
            num_res_blocks=3,
            attn_resolutions=(8, 16, 32),
            head_dim=64,
            dropout=0.1,
            out_ch=6,
        ),
    ),
    'lsun_church128': (
        128,
        1,
        dict(
            ch=64,
            emb_ch=768,
            ch_mult=(1, 2, 4, 6, 8),
            num_res_blocks=3,
            attn_resolutions=(8, 16, 32),
            head_dim=64,
            dropout=0.1,
            out_ch=6,
        ),
    ),
}
# Pinned: a change here changes which released checkpoints load.
PAPER_PARAMETER_COUNTS = {
    'cifar10': 60_004_099,
    'imagenet64': 295_905_222,
    'lsun_bedroom128': 139_578_502,
    'lsun_church128': 139_578_502,
}


def _abstract_init(net, size, num_classes, channels=3):
  x = jax.ShapeDtypeStruct((2, size, size, channels), jnp.float32)
  logsnr = jax.ShapeDtypeStruct((2,), jnp.float32)
  y = jax.ShapeDtypeStruct((2,), jnp.int32)
  variables = jax.eval_shape(
      lambda x, t, y: net.init(jax.random.key(0), x, t, y), x, logsnr, y
  )
  out = jax.eval_shape(
      lambda v, x, t, y: net.apply(v, x, t, y), variables, x, logsnr, y
  )
  return variables['params'], out


@pytest.mark.parametrize('name', sorted(PAPER_ARCHITECTURES))
def test_paper_architecture_shapes_and_parameter_count(name):
  size, num_classes, kwargs = PAPER_ARCHITECTURES[name]
  net = unet.UNet(
      num_classes=num_classes,
      logsnr_input_type='inv_cos',
      resblock_resample=True,
      **kwargs,
  )
  params, out = _abstract_init(net, size, num_classes)
  count = sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))
  print(f'{name}: {count:,} parameters')
  assert out.shape == (2, size, size, kwargs['out_ch'])
  assert count == PAPER_PARAMETER_COUNTS[name]
  assert ('class_emb' in params) == (num_classes > 1)


def _release_names_cifar10():
  """Top-level names of the release's CIFAR-10 network (its unet.py)."""
  names = {
      'conv_in',
      'dense0',
      'dense1',
      'norm_out',
      'conv_out',
      'mid.block_1',
      'mid.attn_1',
      'mid.block_2',
  }
  resolution = {0: 32, 1: 16, 2: 8}
  for level in range(3):
    for j in range(3):
      names.add(f'down_{level}.block_{j}')
      if resolution[level] in (8, 16):
        names.add(f'down_{level}.attn_{j}')
    for j in range(4):
      names.add(f'up_{level}.block_{j}')
      if resolution[level] in (8, 16):
        names.add(f'up_{level}.attn_{j}')
  names |= {
      'down_0.downsample',
      'down_1.downsample',
      'up_1.upsample',
      'up_2.upsample',
  }
  return names


def test_parameter_names_match_the_release():
  size, num_classes, kwargs = PAPER_ARCHITECTURES['cifar10']
  params, _ = _abstract_init(
      unet.UNet(num_classes=num_classes, **kwargs), size, num_classes
  )
  assert set(params) == _release_names_cifar10()
  assert set(params['down_0.block_0']) == {
      'norm1',
      'conv1',
      'temb_proj',
      'norm2',
      'conv2',
  }
  # Concatenated skips change the channel count: a 1x1 shortcut appears.
  assert 'nin_shortcut' in params['up_0.block_0']
  attn = params['mid.attn_1']
  assert set(attn) == {'norm', 'q', 'k', 'v', 'proj_out'}
  assert attn['q']['kernel'].shape == (256, 1, 256)  # C x heads x head_dim
  assert attn['proj_out']['kernel'].shape == (1, 256, 256)
  assert params['conv_in']['kernel'].shape == (3, 3, 3, 256)
  assert params['dense0']['kernel'].shape == (256, 1024)

  _, _, kwargs = PAPER_ARCHITECTURES['imagenet64']
  params, _ = _abstract_init(unet.UNet(num_classes=1000, **kwargs), 64, 1000)
  assert params['class_emb']['kernel'].shape == (1000, 768)
  # head_dim 64 on 192 * 4 channels: 12 heads.
  assert params['mid.attn_1']['q']['kernel'].shape == (768, 12, 64)


def test_tiny_network_outputs_zero_at_init_and_depends_on_inputs(
    tiny_unet_kwargs,
):
  net = unet.UNet(out_ch=2, num_classes=10, **tiny_unet_kwargs)
  x = jax.random.normal(jax.random.key(0), (3, 8, 8, 1))
  logsnr = jnp.asarray([-5.0, 0.0, 5.0])
  y = jnp.asarray([0, 3, 9])
  params = jax.jit(net.init)(jax.random.key(1), x, logsnr, y)['params']
  apply = jax.jit(lambda p, x, t, y: net.apply({'params': p}, x, t, y))
  out = apply(params, x, logsnr, y)
  assert out.shape == (3, 8, 8, 2)
  np.testing.assert_array_equal(out, 0.0)  # zero-initialised output layers

  params = randomize_params(params, jax.random.key(2))
  base = apply(params, x, logsnr, y)
  assert float(jnp.std(base)) > 0
  for changed in (
      apply(params, x, logsnr + 1.0, y),
      apply(params, x, logsnr, (y + 1) % 10),
  ):
    assert float(jnp.max(jnp.abs(changed - base))) > 1e-4


@pytest.mark.slow
def test_dropout_is_active_only_in_training(tiny_unet_kwargs):
  net = unet.UNet(out_ch=1, **tiny_unet_kwargs)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
  logsnr = jnp.zeros((2,))
  params = randomize_params(
      jax.jit(net.init)(jax.random.key(1), x, logsnr)['params'],
      jax.random.key(2),
  )
  apply = lambda train, key: net.apply(
      {'params': params}, x, logsnr, train=train, rngs={'dropout': key}
  )
  np.testing.assert_array_equal(
      apply(False, jax.random.key(3)), apply(False, jax.random.key(4))
  )
  assert (
      float(
          jnp.max(
              jnp.abs(
                  apply(True, jax.random.key(3))
                  - apply(True, jax.random.key(4))
              )
          )
      )
      > 1e-4
  )


def test_bad_configurations_are_refused(tiny_unet_kwargs):
  x = jnp.zeros((1, 8, 8, 1))
  with pytest.raises(ValueError, match='exactly one of num_heads and head_dim'):
    kwargs = dict(tiny_unet_kwargs, head_dim=4)
    unet.UNet(out_ch=1, **kwargs).init(jax.random.key(0), x, jnp.zeros((1,)))
  with pytest.raises(ValueError, match="Unknown logsnr_input_type 'cos'"):
    kwargs = dict(tiny_unet_kwargs, logsnr_input_type='cos')
    unet.UNet(out_ch=1, **kwargs).init(jax.random.key(0), x, jnp.zeros((1,)))
  with pytest.raises(ValueError, match='pass labels y'):
    unet.UNet(out_ch=1, num_classes=10, **tiny_unet_kwargs).init(
        jax.random.key(0), x, jnp.zeros((1,))
    )


def test_float64_parameters_and_inputs_compute_in_float64(tiny_unet_kwargs):
  # The release's U-Net leaves the dtype to flax (the inputs' and
  # parameters'), so under x64 with float64 parameters it computes in
  # float64; so does this one unless given a dtype.
  with float64():
    x = jax.random.normal(jax.random.key(2), (4, 8, 8, 1), jnp.float64)
    logsnr = jnp.linspace(-10.0, 10.0, 4, dtype=jnp.float64)
    y = jnp.arange(4) % 3
    kwargs = dict(tiny_unet_kwargs, out_ch=1, num_classes=3, dropout=0.0)
    net = unet.UNet(**kwargs)
    params = net.init(jax.random.key(0), x, logsnr, y)['params']
    params = jax.tree_util.tree_map(
        lambda p: p.astype(jnp.float64),
        randomize_params(params, jax.random.key(1)),
    )
    out = net.apply({'params': params}, x, logsnr, y)
    out64 = unet.UNet(**kwargs, dtype=jnp.float64).apply(
        {'params': params}, x, logsnr, y
    )
    out32 = unet.UNet(**kwargs, dtype=jnp.float32).apply(
        {'params': params}, x, logsnr, y
    )
  assert out.dtype == jnp.float64
  np.testing.assert_array_equal(out, out64)
  assert out32.dtype == jnp.float32  # an explicit dtype still rules
  assert np.max(np.abs(np.asarray(out) - np.asarray(out32))) > 0
