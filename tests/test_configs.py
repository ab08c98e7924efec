"""Config files are plain data; validation happens where a run starts."""

import importlib
import os
import subprocess
import sys

import pytest

from diffusion_distillation.runs import config_checks
from diffusion_distillation.utils import errors
from tests.helpers import REPO
from tests.helpers import tiny_config

CONFIG_NAMES = sorted(
    name[:-3]
    for name in os.listdir(os.path.join(REPO, 'configs'))
    if name.endswith('.py') and name not in ('__init__.py', 'common.py')
)


@pytest.mark.parametrize('name', CONFIG_NAMES)
def test_every_config_file_validates(name):
  config = importlib.import_module(f'configs.{name}').get_config()
  assert config_checks.check_config(config) is config


def test_loading_a_config_imports_no_jax_or_tensorflow():
  # Flags are parsed before main.py may call jax.distributed.initialize(),
  # which must come before anything starts a JAX backend.
  code = (
      'import sys\n'
      'from ml_collections import config_flags\n'
      'from configs import cifar10, digits, imagenet64_distill\n'
      'for module in (cifar10, digits, imagenet64_distill):\n'
      '  module.get_config()\n'
      "print(sorted(m for m in ('jax', 'tensorflow') if m in sys.modules))\n"
  )
  result = subprocess.run(
      [sys.executable, '-c', code],
      cwd=REPO,
      capture_output=True,
      text=True,
      check=True,
  )
  assert result.stdout.strip() == '[]'


def test_a_required_field_left_unset_is_named():
  from configs import common

  config = common.get_config()
  with pytest.raises(
      errors.InputError,
      match=r'^dataset\.\w+ is not set: .* --config\.dataset\.\w+=VALUE\.$',
  ):
    config_checks.check_config(config)


def test_an_unknown_ema_schedule_is_refused():
  with pytest.raises(errors.InputError, match='train: Unknown ema_schedule'):
    config_checks.check_config(tiny_config(**{'train.ema_schedule': 'cold'}))
