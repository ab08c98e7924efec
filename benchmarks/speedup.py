"""Equal-quality speed-up: how many undistilled DDIM steps match a student.

From the quality benchmark's table (benchmarks/results/quality_vs_steps.json,
or any --mode=eval results.json), for each distilled student: the DDIM step
count of the same teacher that reaches the student's FD, interpolated
linearly in log(steps) between the two DDIM entries that bracket it, and the
speed-up at equal quality, that count over the student's steps.

  python -m benchmarks.speedup [benchmarks/results/quality_vs_steps.json]
"""

import json
import math
import os

from absl import app

_DEFAULT_TABLE = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    'results',
    'quality_vs_steps.json',
)


def _finite(value) -> bool:
  return value is not None and math.isfinite(value)


def ddim_steps_at(ddim_fd: dict, fd: float) -> tuple:
  """The DDIM step count whose FD equals `fd`.

  Scans the step counts upwards and takes the first pair whose FDs bracket
  `fd` (a curve that rises again at many steps is not crossed a second
  time), interpolating linearly in log(steps).

  Args:
    ddim_fd: {steps: FD} of undistilled DDIM.
    fd: the FD to reach.

  Returns:
    (steps, bound, bracket): bound 'interpolated' with bracket (fewer, more)
    the two step counts used; 'at_most' when DDIM's fewest steps already
    reach `fd` (steps is that count); 'at_least' when no DDIM entry does
    (steps is the most DDIM steps measured).
  """
  points = sorted((n, f) for n, f in ddim_fd.items() if _finite(f))
  if not points:
    raise ValueError('no finite DDIM FD to compare with')
  if points[0][1] <= fd:
    return points[0][0], 'at_most', None
  for (n_a, f_a), (n_b, f_b) in zip(points, points[1:]):
    if f_b <= fd:  # f_a > fd: the first pair that brackets it
      share = (f_a - fd) / (f_a - f_b)
      log_steps = math.log(n_a) + share * (math.log(n_b) - math.log(n_a))
      return math.exp(log_steps), 'interpolated', (n_a, n_b)
  return points[-1][0], 'at_least', None


def equal_quality(results: dict) -> list:
  """For each student of an eval `results` (the dict of results.json, or
  the quality benchmark's JSON, which holds it under 'eval'): its FD, the
  DDIM steps reaching it and the speed-up, as ddim_steps_at says.

  Returns:
    [{'student_steps', 'student_fd', 'ddim_steps', 'speedup', 'bound',
    'bracket'}], by student steps; students with a non-finite FD, and all
    of them when no DDIM FD is finite, are left out.
  """
  results = results.get('eval', results)
  ddim, students = {}, {}
  for row in results['entries']:
    if row['model_steps']:
      students[row['model_steps']] = row['fd']
    elif row['method'] == 'ddim':
      ddim[row['num_steps']] = row['fd']
  if not any(_finite(f) for f in ddim.values()):
    return []
  rows = []
  for n, fd in sorted(students.items()):
    if not _finite(fd):
      continue
    steps, bound, bracket = ddim_steps_at(ddim, fd)
    rows.append({
        'student_steps': n,
        'student_fd': fd,
        'ddim_steps': steps,
        'speedup': steps / n,
        'bound': bound,
        'bracket': list(bracket) if bracket else None,
    })
  return rows


def markdown(rows: list) -> str:
  """The speed-ups as a Markdown table."""
  marks = {'interpolated': '', 'at_most': '≤ ', 'at_least': '≥ '}
  lines = [
      '| student steps | student FD | DDIM steps at that FD | speed-up |',
      '|---:|---:|---:|---:|',
  ]
  for row in rows:
    mark = marks[row['bound']]
    lines.append(
        f'| {row["student_steps"]} | {row["student_fd"]:.3f} '
        f'| {mark}{row["ddim_steps"]:.1f} | {mark}{row["speedup"]:.1f}× |'
    )
  return '\n'.join(lines) + '\n'


def main(argv):
  if len(argv) > 2:
    raise app.UsageError('Give at most one table (a JSON file).')
  path = argv[1] if len(argv) > 1 else _DEFAULT_TABLE
  with open(path) as f:
    print(markdown(equal_quality(json.load(f))), end='')


if __name__ == '__main__':
  app.run(main)
