"""What tests share: paths, the tiny config, subprocess runs, a kill at a
checkpoint, comparisons of saved parameters. Fixtures and the environment
set-up are in conftest.py."""

import os
import signal
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import pytest

from configs import test as test_config
from diffusion_distillation import network as network_lib
from diffusion_distillation.runs import workdir as workdir_lib
from diffusion_distillation.utils import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The limit on any subprocess or wait in a test: long enough that only a
# hang reaches it on a slow, shared machine (CI allows 90 minutes in all).
HANG_SECS = 45 * 60
TEST_CONFIG = os.path.join(REPO, 'configs', 'test.py')


# Six teacher updates, a checkpoint after every two, one update per dispatch.
SHORT_TEACHER = {
    'train.num_steps': 6,
    'train.substeps': 1,
    'checkpoint.every_steps': 2,
    'checkpoint.max_to_keep': 3,
    'log_every_steps': 100,
}


def files_under(workdir):
  """Every file under `workdir`, as paths relative to it."""
  out = set()
  for root, _, names in os.walk(workdir):
    out.update(os.path.relpath(os.path.join(root, n), workdir) for n in names)
  return out


def float64():
  """A context in which JAX computes in float64: jax.enable_x64(True), or
  jax.experimental.enable_x64() on jax < 0.7 (Python 3.10's newest jax is
  0.6.2)."""
  if hasattr(jax, 'enable_x64'):
    return jax.enable_x64(True)
  from jax import experimental

  return experimental.enable_x64()


def tiny_config(**overrides):
  """configs/test.py with dotted overrides: tiny_config(**{'model.ch': 16})."""
  return with_overrides(test_config.get_config(), **overrides)


def with_overrides(config, **overrides):
  """`config` with dotted overrides applied in place; returns it."""
  for key, value in overrides.items():
    *sections, field = key.split('.')
    target = config
    for section in sections:
      target = target[section]
    target[field] = value
  return config


def run_python(args, *, env=None, timeout=HANG_SECS, **kwargs):
  """Runs `python args...` in the repository; returns the CompletedProcess."""
  return subprocess.run(
      [sys.executable] + list(args),
      cwd=REPO,
      env=dict(os.environ, **(env or {})),
      capture_output=True,
      text=True,
      timeout=timeout,
      **kwargs,
  )


def kill_main_when_saved(
    flags, checkpoint_dir, *, what: str, signum=signal.SIGKILL
):
  """Starts `python -m diffusion_distillation.main flags...` and sends it
  `signum` (SIGKILL: killed outright) as soon as `checkpoint_dir` is
  committed on disk (orbax's commit_success.txt), i.e. mid-phase. Fails if
  the run ends first or hangs (HANG_SECS).

  Returns:
    (the exit status, what the run wrote to stderr).
  """
  with tempfile.TemporaryFile('w+') as stderr:
    proc = subprocess.Popen(
        [sys.executable, '-m', 'diffusion_distillation.main'] + flags,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
    try:
      deadline = time.time() + HANG_SECS
      committed = os.path.join(checkpoint_dir, 'commit_success.txt')
      while not os.path.exists(committed):
        assert proc.poll() is None, f'{what} ended before it could be killed'
        assert time.time() < deadline, f'no {what} checkpoint appeared'
        time.sleep(0.02)
      proc.send_signal(signum)
      proc.wait(timeout=HANG_SECS)
    finally:
      if proc.poll() is None:
        proc.kill()
    stderr.seek(0)
    return proc.returncode, stderr.read()


def saved_params(workdir, num_sample_steps, config):
  """models/<num_sample_steps> of `workdir` as NumPy arrays."""
  network = network_lib.build_network(config, dropout=0.0)
  abstract = network_lib.abstract_params(network, config)
  params, _ = workdir_lib.load_model(
      workdir, abstract, num_sample_steps=num_sample_steps
  )
  return jax.tree_util.tree_map(np.asarray, params)


def assert_trees_close(a, b, atol=1e-6):
  leaves_a, tree_a = jax.tree_util.tree_flatten(a)
  leaves_b, tree_b = jax.tree_util.tree_flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(x, y, atol=atol, rtol=0)


def randomize_params(params, rng, scale=0.2):
  """Replaces every parameter by noise: a fresh U-Net outputs exactly zero."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(rng, len(leaves))
  return jax.tree_util.tree_unflatten(
      treedef,
      [
          scale * jax.random.normal(k, leaf.shape, leaf.dtype)
          for k, leaf in zip(keys, leaves)
      ],
  )


# Two CPU devices for a test's subprocess, with the collectives of a split
# CPU that wait out a busy machine, as the command sets them.
TWO_CPU_DEVICES = {
    'XLA_FLAGS': cli.with_patient_collectives(
        '--xla_force_host_platform_device_count=2'
    )
}


# The tests that read the real Fashion-MNIST files skip without them.
needs_debian_fashion_mnist = pytest.mark.skipif(
    not os.path.isdir('/usr/share/datasets/fashion-mnist'),
    reason='needs apt-get install dataset-fashion-mnist',
)
