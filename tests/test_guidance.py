"""Classifier-free guidance and its distillation: the guided prediction, the
null label, stage one's target, the w-conditioned student's start, stage
two's target, the stochastic sampler, and the guided configs' checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_distillation import diffusion
from diffusion_distillation import network as network_lib
from diffusion_distillation import unet
from diffusion_distillation.guided import config_checks
from diffusion_distillation.guided import guidance
from diffusion_distillation.utils import errors
from tests.helpers import float64
from tests.helpers import randomize_params
from tests.test_diffusion import SCHEDULE
from tests.test_diffusion import _gaussian_denoiser
from tests.test_diffusion import _random_xz
from tests.test_diffusion import _student_step_from_target

_NUM_CLASSES = 10  # + the null label 10


def _tiny_unet(tiny_unet_kwargs, *, guidance_embedding, mean_type='v'):
  kwargs = dict(tiny_unet_kwargs, dropout=0.0)
  return unet.UNet(
      out_ch=diffusion.output_channels(mean_type, 1),
      num_classes=_NUM_CLASSES + 1,
      guidance_embedding=guidance_embedding,
      **kwargs,
  )


def _inputs(batch=6):
  z = jax.random.normal(jax.random.key(0), (batch, 8, 8, 1))
  logsnr = jnp.linspace(-8.0, 8.0, batch)
  labels = jnp.arange(batch) % _NUM_CLASSES
  return z, logsnr, labels


@pytest.fixture(scope='module')
def teacher(tiny_unet_kwargs):
  """A guided teacher's network and random parameters (no w-embedding)."""
  net = _tiny_unet(tiny_unet_kwargs, guidance_embedding=False)
  z, logsnr, labels = _inputs(1)
  params = jax.jit(net.init)(jax.random.key(1), z, logsnr, labels)['params']
  return net, randomize_params(params, jax.random.key(2))


# ----------------------------------------------------------------------------
# The guided prediction.


def _label_model_fn(mean_type):
  """A raw network output that depends on z, log-SNR and the label."""

  def model_fn(z, logsnr, y):
    scale = 1.0 + 0.1 * diffusion.broadcast_from_left(y, z.shape)
    shift = 0.05 * diffusion.broadcast_from_left(logsnr, z.shape)
    out = jnp.tanh(scale * z + shift)
    return jnp.concatenate([out, -out], -1) if mean_type == 'both' else out

  return model_fn


@pytest.mark.parametrize('mean_type', diffusion.MEAN_TYPES)
def test_guidance_zero_is_the_conditional_model(mean_type):
  z, logsnr, labels = _inputs()
  model_fn = _label_model_fn(mean_type)
  for clip_x in (False, True):
    denoise = lambda w, clip_x=clip_x: guidance.make_guided_denoise_fn(
        model_fn,
        labels=labels,
        null_label=_NUM_CLASSES,
        w=w,
        mean_type=mean_type,
        clip_x=clip_x,
    )(z, logsnr)
    conditional = diffusion.make_denoise_fn(
        lambda z, logsnr: model_fn(z, logsnr, labels),
        mean_type=mean_type,
        clip_x=clip_x,
    )(z, logsnr)
    for a, b in zip(denoise(0.0), conditional):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    # The unconditional branch matters at w > 0.
    assert float(jnp.max(jnp.abs(denoise(1.0).x - conditional.x))) > 1e-3


def test_guided_prediction_is_the_same_in_x_eps_and_v():
  with float64():
    logsnr = jnp.linspace(-15.0, 15.0, 31, dtype=jnp.float64)
    _, _, z = _random_xz(jax.random.key(3), logsnr, shape=(31, 4, 4, 1))
    z = z.astype(jnp.float64)
    keys = jax.random.split(jax.random.key(4), 2)
    cond, uncond = (
        diffusion.prediction_from_x(
            z=z,
            x=jax.random.uniform(k, z.shape, jnp.float64, -1.0, 1.0),
            logsnr=logsnr,
        )
        for k in keys
    )
    w = jnp.linspace(0.0, 4.0, 31, dtype=jnp.float64)
    guided = guidance.guided_prediction(cond, uncond, w)
    bw = w[:, None, None, None]
    # Combining in eps (or v) and converting gives the x combination.
    x_from_eps = diffusion.x_from_eps(
        z=z, eps=(1 + bw) * cond.eps - bw * uncond.eps, logsnr=logsnr
    )
    x_from_v = diffusion.x_from_v(
        z=z, v=(1 + bw) * cond.v - bw * uncond.v, logsnr=logsnr
    )
    np.testing.assert_allclose(x_from_eps, guided.x, atol=1e-6)
    np.testing.assert_allclose(x_from_v, guided.x, atol=1e-9)
    # And the three components stay consistent with z.
    np.testing.assert_allclose(
        diffusion.diffuse(x=guided.x, eps=guided.eps, logsnr=logsnr),
        z,
        atol=1e-9,
    )


def test_clipping_comes_after_the_combination():
  z, logsnr = jnp.zeros((1, 1)), jnp.zeros((1,))
  branch = lambda x: diffusion.prediction_from_x(
      z=z, x=jnp.full((1, 1), x), logsnr=logsnr
  )
  guided = guidance.clip_prediction(
      guidance.guided_prediction(branch(1.0), branch(1.5), 1.0),
      z=z,
      logsnr=logsnr,
  )
  # 2 * 1.0 - 1.5 = 0.5; clipping each branch first would give 1.0.
  np.testing.assert_allclose(guided.x, 0.5)
  guided = guidance.clip_prediction(
      guidance.guided_prediction(branch(0.9), branch(0.5), 1.0),
      z=z,
      logsnr=logsnr,
  )
  np.testing.assert_allclose(guided.x, 1.0)  # 1.3, clipped


# ----------------------------------------------------------------------------
# The null label.


@pytest.mark.parametrize('p_uncond', [0.0, 0.1, 0.5])
def test_the_null_label_is_used_with_probability_p_uncond(p_uncond):
  n = 200_000
  labels = jnp.arange(n, dtype=jnp.int32) % _NUM_CLASSES
  dropped = guidance.drop_labels(
      jax.random.key(5), labels, null_label=_NUM_CLASSES, p_uncond=p_uncond
  )
  is_null = np.asarray(dropped == _NUM_CLASSES)
  # Binomial: 5 standard deviations.
  bound = 5.0 * np.sqrt(p_uncond * (1 - p_uncond) / n)
  assert abs(is_null.mean() - p_uncond) <= bound
  # Independently of the class, and the others untouched.
  for label in (0, 7):
    of_class = np.asarray(labels) == label
    assert abs(is_null[of_class].mean() - p_uncond) <= 5.0 * np.sqrt(
        max(p_uncond * (1 - p_uncond), 1e-12) / of_class.sum()
    )
  np.testing.assert_array_equal(
      np.asarray(dropped)[~is_null], np.asarray(labels)[~is_null]
  )


def test_guidance_strengths_are_uniform_in_the_range():
  w = np.asarray(
      guidance.sample_guidance(jax.random.key(6), 100_000, w_min=0.5, w_max=4.0)
  )
  assert w.min() >= 0.5 and w.max() <= 4.0
  np.testing.assert_allclose(w.mean(), 2.25, atol=0.02)
  np.testing.assert_allclose(w.var(), 3.5**2 / 12, rtol=0.02)


# ----------------------------------------------------------------------------
# Stage one.


@pytest.mark.slow  # one compilation of eight U-Net calls: 10-35 s
def test_stage_one_target_at_fixed_w_is_the_direct_guided_prediction(teacher):
  net, params = teacher
  z, logsnr, labels = _inputs()
  w = jnp.asarray([0.0, 0.5, 1.0, 2.0, 3.0, 4.0])
  x = jax.random.uniform(jax.random.key(7), (6, 8, 8, 1), minval=-1.0)
  rng = jax.random.key(8)

  @jax.jit  # one compilation; the parameters are an argument
  def compute(params):
    guided = guidance.make_guided_denoise_fn(
        lambda z, logsnr, y: net.apply({'params': params}, z, logsnr, y),
        labels=labels,
        null_label=_NUM_CLASSES,
        w=w,
        mean_type='v',
        clip_x=False,
    )
    conditional = diffusion.make_denoise_fn(
        lambda z, logsnr: net.apply({'params': params}, z, logsnr, labels),
        mean_type='v',
        clip_x=False,
    )

    # Directly: two separate network calls, x from v for each, combined.
    def x_of(y, z, logsnr):
      v = net.apply({'params': params}, z, logsnr, y)
      return diffusion.x_from_v(z=z, v=v, logsnr=logsnr)

    def direct(z, logsnr):
      bw = w[:, None, None, None]
      x_null = x_of(jnp.full_like(labels, _NUM_CLASSES), z, logsnr)
      return (1 + bw) * x_of(labels, z, logsnr) - bw * x_null

    loss = lambda student: diffusion.denoising_loss(
        student,
        x=x,
        rng=rng,
        logsnr_schedule=SCHEDULE,
        num_steps=0,
        weighting='constant',
        teacher_fn=guided,
    )
    # The stage-one loss at its own (u, eps), by hand.
    rng_time, rng_noise = jax.random.split(rng)
    u, _ = diffusion.sample_time(rng_time, 6, num_steps=0)
    zt = diffusion.diffuse(
        x=x, eps=jax.random.normal(rng_noise, x.shape), logsnr=SCHEDULE(u)
    )
    return {
        'target': guided(z, logsnr).x,
        'direct': direct(z, logsnr),
        'loss_of_conditional': loss(conditional),
        'by_hand': diffusion.meanflat(
            (conditional(zt, SCHEDULE(u)).x - direct(zt, SCHEDULE(u))) ** 2
        ),
    }

  out = compute(params)
  np.testing.assert_allclose(out['target'], out['direct'], atol=1e-5)
  # The conditional model's loss (zero at w = 0, the first example).
  np.testing.assert_allclose(
      out['loss_of_conditional'], out['by_hand'], rtol=1e-4, atol=1e-10
  )
  assert float(out['by_hand'][0]) < 1e-10
  assert float(jnp.min(out['by_hand'][1:])) > 1e-5


def test_the_w_conditioned_student_starts_as_its_teacher(
    teacher, tiny_unet_kwargs
):
  teacher_net, teacher_params = teacher
  student_net = _tiny_unet(tiny_unet_kwargs, guidance_embedding=True)
  z, logsnr, labels = _inputs()
  fresh = jax.jit(student_net.init)(
      jax.random.key(9), z, logsnr, labels, jnp.zeros((6,))
  )['params']
  assert set(fresh) - set(teacher_params) == {'w_dense0', 'w_dense1'}
  student_params = network_lib.add_guidance_embedding(teacher_params, fresh)
  apply = jax.jit(
      lambda p, w: student_net.apply({'params': p}, z, logsnr, labels, w)
  )
  # Equal up to XLA's fusion of the added zero embedding.
  same = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  conditional = jax.jit(
      lambda p: teacher_net.apply({'params': p}, z, logsnr, labels)
  )(teacher_params)
  assert float(jnp.std(conditional)) > 0.1
  for w in (0.0, 1.0, 3.7):
    same(apply(student_params, jnp.full((6,), w)), conditional)
  # Without w the student network is the teacher's network.
  same(
      jax.jit(lambda p: student_net.apply({'params': p}, z, logsnr, labels))(
          student_params
      ),
      conditional,
  )
  # A trained (here: random) w-embedding makes w matter; zeroed, the student
  # is back to its initialisation.
  trained = dict(
      student_params,
      **randomize_params(
          {k: student_params[k] for k in ('w_dense0', 'w_dense1')},
          jax.random.key(10),
      ),
  )
  w1, w2 = jnp.full((6,), 1.0), jnp.full((6,), 3.0)
  assert float(jnp.max(jnp.abs(apply(trained, w1) - apply(trained, w2)))) > 1e-4
  zeroed = dict(
      trained,
      **jax.tree_util.tree_map(
          jnp.zeros_like,
          {k: trained[k] for k in ('w_dense0', 'w_dense1')},
      ),
  )
  same(apply(zeroed, w2), conditional)


def test_a_student_must_be_its_teacher_plus_a_w_embedding(teacher):
  _, teacher_params = teacher
  with pytest.raises(ValueError, match='teacher plus a w-embedding'):
    network_lib.add_guidance_embedding(teacher_params, teacher_params)


def test_unguided_networks_keep_their_tree_and_refuse_w(tiny_unet_kwargs):
  net = unet.UNet(out_ch=1, num_classes=_NUM_CLASSES, **tiny_unet_kwargs)
  z, logsnr, labels = _inputs(1)
  params = jax.eval_shape(
      lambda: net.init(jax.random.key(0), z, logsnr, labels)
  )['params']
  assert not network_lib.has_guidance_embedding(params)
  assert not any(name.startswith('w_') for name in params)
  with pytest.raises(ValueError, match='takes no guidance strength'):
    net.init(jax.random.key(0), z, logsnr, labels, jnp.ones((1,)))


# ----------------------------------------------------------------------------
# Stage two: the distillation target of a w-conditioned teacher.


def _w_conditioned_analytic_teacher(w, mean_type):
  """The optimal denoiser of Gaussian data whose mean moves with w, as a
  w-conditioned model would be: w [B] bound per example."""

  def model_fn(z, logsnr):
    mean = 0.3 + 0.1 * diffusion.broadcast_from_left(w, z.shape)
    x = _gaussian_denoiser(mean, 0.5)(z, logsnr)
    return diffusion.model_output_from_x(
        z=z, x=x, logsnr=logsnr, mean_type=mean_type
    )

  return model_fn


@pytest.mark.parametrize('mean_type', diffusion.MEAN_TYPES)
def test_stage_two_target_one_step_property_with_w_per_example(mean_type):
  with float64():
    num_student_steps = 4
    step_index = jnp.asarray([0, 1, 2, 3, 1, 2, 3, 3])
    w = jnp.asarray([0.0, 0.5, 1.0, 2.0, 4.0, 3.0, 0.0, 4.0], jnp.float64)
    teacher_fn = diffusion.make_denoise_fn(
        _w_conditioned_analytic_teacher(w, mean_type),
        mean_type=mean_type,
        clip_x=False,
    )
    u = (step_index + 1).astype(jnp.float64) / num_student_steps
    logsnr_t = SCHEDULE(u)
    _, _, z = _random_xz(jax.random.key(11), logsnr_t, shape=(8, 4, 4, 1))
    z = z.astype(jnp.float64)
    x_target = diffusion.distillation_target(
        teacher_fn,
        z=z,
        u=u,
        step_index=step_index,
        num_student_steps=num_student_steps,
        logsnr_schedule=SCHEDULE,
    )
    logsnr_mid, logsnr_s = SCHEDULE(u - 1 / 8), SCHEDULE(u - 1 / 4)
    pred_mid = teacher_fn(
        diffusion.ddim_step(teacher_fn(z, logsnr_t), logsnr_s=logsnr_mid),
        logsnr_mid,
    )
    z_teacher = diffusion.ddim_step(pred_mid, logsnr_s=logsnr_s)
    z_student = _student_step_from_target(
        x_target, z=z, logsnr_t=logsnr_t, logsnr_s=logsnr_s, mean_type=mean_type
    )
    later = np.asarray(step_index) > 0
    np.testing.assert_allclose(
        np.asarray(z_student)[later], np.asarray(z_teacher)[later], atol=1e-9
    )
    np.testing.assert_array_equal(
        np.asarray(x_target)[~later], np.asarray(pred_mid.x)[~later]
    )
    # Each example's target is its own w's: w = 0 and w = 4 at the same
    # (z, u) differ.
    other = diffusion.distillation_target(
        diffusion.make_denoise_fn(
            _w_conditioned_analytic_teacher(jnp.zeros_like(w), mean_type),
            mean_type=mean_type,
            clip_x=False,
        ),
        z=z,
        u=u,
        step_index=step_index,
        num_student_steps=num_student_steps,
        logsnr_schedule=SCHEDULE,
    )
    assert float(jnp.max(jnp.abs(other - x_target)[w > 0])) > 1e-3
    np.testing.assert_allclose(
        np.asarray(other)[np.asarray(w) == 0],
        np.asarray(x_target)[np.asarray(w) == 0],
    )


# ----------------------------------------------------------------------------
# The stochastic sampler.


def _oracle(mean=0.3, std=0.5):
  x_fn = _gaussian_denoiser(mean, std)
  return lambda z, logsnr: diffusion.prediction_from_x(
      z=z, x=x_fn(z, logsnr), logsnr=logsnr
  )


def test_renoise_is_the_forward_process():
  with float64():
    logsnr_s = jnp.asarray([10.0, 2.0, -1.0, -15.0], jnp.float64)
    logsnr_t = jnp.asarray([4.0, 1.5, -8.0, -20.0], jnp.float64)
    a_s, s_s = diffusion.alpha_sigma(logsnr_s)
    a_t, s_t = diffusion.alpha_sigma(logsnr_t)
    z_s = jnp.asarray([0.3, -1.2, 0.7, 2.0], jnp.float64)
    mean = diffusion.renoise(
        z_s, logsnr_s=logsnr_s, logsnr_t=logsnr_t, noise=jnp.zeros(4)
    )
    std = (
        diffusion.renoise(
            z_s, logsnr_s=logsnr_s, logsnr_t=logsnr_t, noise=jnp.ones(4)
        )
        - mean
    )
    np.testing.assert_allclose(mean, a_t / a_s * z_s, rtol=1e-12)
    np.testing.assert_allclose(
        std**2, s_t**2 - (a_t / a_s) ** 2 * s_s**2, rtol=1e-9
    )
    # From clean data (alpha_s = 1, sigma_s = 0) it is q(z_t | x).
    x = jnp.asarray([0.5, -0.5, 0.1, 0.9], jnp.float64)
    np.testing.assert_allclose(
        diffusion.renoise(
            x, logsnr_s=jnp.inf, logsnr_t=logsnr_t, noise=jnp.ones(4)
        ),
        diffusion.diffuse(x=x, eps=jnp.ones(4), logsnr=logsnr_t),
        rtol=1e-12,
    )


def test_one_stochastic_step_is_ddim():
  z = jax.random.normal(jax.random.key(12), (16, 4))
  ddim = diffusion.ddim_sample(
      _oracle(), z_init=z, num_steps=1, logsnr_schedule=SCHEDULE
  )
  stochastic = diffusion.stochastic_sample(
      _oracle(),
      rng=jax.random.key(13),
      z_init=z,
      num_steps=1,
      logsnr_schedule=SCHEDULE,
  )
  np.testing.assert_array_equal(stochastic, ddim)


def test_stochastic_sampler_oracle_reproduces_gaussian_data():
  # The forward process keeps the marginals exactly and DDIM does in the
  # limit, so with many steps the sampler reproduces the data. (With few
  # steps the oracle, a posterior mean, is renoised as if it were a sample
  # and the spread shrinks: the sampler is meant for distilled students.)
  z = jax.random.normal(jax.random.key(14), (40000,))
  x = diffusion.stochastic_sample(
      _oracle(),
      rng=jax.random.key(15),
      z_init=z,
      num_steps=256,
      logsnr_schedule=SCHEDULE,
  )
  assert abs(float(jnp.mean(x)) - 0.3) < 0.01
  assert abs(float(jnp.std(x)) - 0.5) < 0.01
  # It is not DDIM: fresh noise moves the samples.
  ddim = diffusion.ddim_sample(
      _oracle(), z_init=z, num_steps=4, logsnr_schedule=SCHEDULE
  )
  stochastic = diffusion.stochastic_sample(
      _oracle(),
      rng=jax.random.key(15),
      z_init=z,
      num_steps=4,
      logsnr_schedule=SCHEDULE,
  )
  assert float(jnp.mean(jnp.abs(stochastic - ddim))) > 0.05


# ----------------------------------------------------------------------------
# Guided configs.


def _guided_config(**overrides):
  from configs import test_guided

  config = test_guided.get_config()
  for key, value in overrides.items():
    section, field = key.split('.')
    config[section][field] = value
  return config


def test_guided_network_has_a_null_class_and_its_students_a_w_embedding():
  config = _guided_config()
  teacher = network_lib.abstract_params(
      network_lib.build_network(config, dropout=0.0, guidance_embedding=False),
      config,
  )
  student = network_lib.abstract_params(
      network_lib.build_network(config, dropout=0.0), config
  )
  assert teacher['class_emb']['kernel'].shape[0] == _NUM_CLASSES + 1
  assert set(student) - set(teacher) == {'w_dense0', 'w_dense1'}
  assert network_lib.has_guidance_embedding(student)
  assert not network_lib.has_guidance_embedding(teacher)


@pytest.mark.parametrize(
    'overrides,message',
    [
        ({'guidance.p_uncond': 0.0}, 'use 0 < p_uncond < 1'),
        ({'guidance.p_uncond': 1.0}, 'use 0 < p_uncond < 1'),
        ({'guidance.w_min': 5.0}, r'w_min=5.0 > w_max=4.0'),
        ({'guide.batch_size': 7}, 'guide.batch_size=7 is not divisible'),
        ({'guide.num_steps': 5}, 'not a multiple of substeps=2'),
        ({'dataset.class_conditional': False}, 'needs labels'),
        ({'eval.guidance': ()}, 'eval.guidance is empty'),
    ],
)
def test_bad_guided_configs_are_refused(overrides, message):
  config = _guided_config(**overrides)
  with pytest.raises(errors.InputError, match=message):
    config_checks.check_config(config, num_devices=2)


def test_imagenet64_guided_is_the_release_network_plus_null_class_and_w():
  from configs import imagenet64_guided

  config = imagenet64_guided.get_config()
  count = lambda guidance_embedding: sum(
      leaf.size
      for leaf in jax.tree_util.tree_leaves(
          network_lib.abstract_params(
              network_lib.build_network(
                  config, dropout=0.0, guidance_embedding=guidance_embedding
              ),
              config,
          )
      )
  )
  released = 295_905_222  # tests/test_unet.py, pinned
  emb_ch, ch = config.model.emb_ch, config.model.ch
  assert count(False) == released + emb_ch  # the null class's row
  w_embedding = (ch * emb_ch + emb_ch) + (emb_ch * emb_ch + emb_ch)
  assert count(True) == released + emb_ch + w_embedding
