"""constraints.txt resolves for every supported Python version."""

import pytest

from tests.helpers import run_python

pytestmark = pytest.mark.slow  # asks the package index, about a minute each


def test_constraints_resolve_for_python_3_10_to_3_13():
  result = run_python(['.ci/lock.py', '--check'])
  assert result.returncode == 0, result.stdout + result.stderr[-3000:]
  for version in ('3.10', '3.11', '3.12', '3.13'):
    assert f'Python {version}: resolves' in result.stdout
