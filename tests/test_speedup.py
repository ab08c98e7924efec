"""The equal-quality speed-up read from a hand-made quality table."""

import math

import pytest

from benchmarks import speedup


def _table(ddim: dict, students: dict) -> dict:
  entries = [
      {'model_steps': 0, 'method': 'ddim', 'num_steps': n, 'fd': fd}
      for n, fd in ddim.items()
  ]
  entries += [
      {'model_steps': 0, 'method': 'ancestral', 'num_steps': n, 'fd': 0.1}
      for n in ddim
  ]
  entries += [
      {'model_steps': n, 'method': 'ddim', 'num_steps': n, 'fd': fd}
      for n, fd in students.items()
  ]
  return {'eval': {'entries': entries}}


# FD 40, 20, 10, 8, 9 at 1, 2, 4, 8, 16 DDIM steps: rises again at 16.
_DDIM = {1: 40.0, 2: 20.0, 4: 10.0, 8: 8.0, 16: 9.0}


def test_interpolates_on_log_steps_between_the_bracketing_entries():
  # 15 lies halfway between 20 (2 steps) and 10 (4 steps): sqrt(2 * 4).
  steps, bound, bracket = speedup.ddim_steps_at(_DDIM, 15.0)
  assert bound == 'interpolated' and bracket == (2, 4)
  assert steps == pytest.approx(math.sqrt(8))
  # An exact match lands on the entry itself.
  assert speedup.ddim_steps_at(_DDIM, 10.0)[0] == pytest.approx(4)


def test_the_first_crossing_counts_when_the_curve_rises_again():
  # 8.5 is crossed between 4 and 8 steps; 16 steps (9.0) is not used.
  steps, bound, bracket = speedup.ddim_steps_at(_DDIM, 8.5)
  assert bracket == (4, 8) and bound == 'interpolated'
  assert steps == pytest.approx(2 ** (2 + 0.75))


def test_bounds_outside_the_measured_steps():
  assert speedup.ddim_steps_at(_DDIM, 50.0) == (1, 'at_most', None)
  assert speedup.ddim_steps_at(_DDIM, 7.0) == (16, 'at_least', None)


def test_equal_quality_gives_each_student_its_speedup():
  rows = speedup.equal_quality(
      _table(_DDIM, {1: 15.0, 2: 7.0, 4: float('nan')})
  )
  assert [r['student_steps'] for r in rows] == [1, 2]  # NaN left out
  one, two = rows
  assert one['speedup'] == pytest.approx(math.sqrt(8))
  assert one['bracket'] == [2, 4] and one['student_fd'] == 15.0
  assert two['bound'] == 'at_least' and two['speedup'] == pytest.approx(8)
  table = speedup.markdown(rows)
  assert '| 1 | 15.000 | 2.8 | 2.8× |' in table
  assert '| 2 | 7.000 | ≥ 16.0 | ≥ 8.0× |' in table
  assert speedup.equal_quality(_table({}, {1: 15.0})) == []
