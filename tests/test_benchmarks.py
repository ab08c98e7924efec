"""The benchmark scripts run end to end on tiny settings (--smoke)."""

import json
import math

import pytest

from tests.helpers import run_python

pytestmark = pytest.mark.slow  # minutes on 2 CPU cores


def _positive(value):
  return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _close(a, b):
  return math.isclose(a, b, rel_tol=1e-9)


def test_throughput_smoke_writes_every_figure(tmp_path):
  out = tmp_path / 'throughput.json'
  result = run_python(
      ['-m', 'benchmarks.throughput', '--smoke', f'--out={out}']
  )
  assert result.returncode == 0, result.stderr[-4000:]
  report = json.loads(out.read_text())

  for key in ('date', 'jax_version', 'jaxlib_version', 'git_commit'):
    assert report[key]
  assert report['smoke'] is True
  assert report['machine']['backend'] and report['machine']['devices']
  peaks = report['matmul']['flops_per_sec']
  assert 'float32' in peaks and all(_positive(p) for p in peaks.values())
  assert set(report['models']) == {'digits'}

  for model in report['models'].values():
    assert _positive(model['parameters'])
    for kind in ('train_step', 'distill_step'):
      step = model[kind]
      for key in (
          'seconds_median',
          'images_per_sec',
          'flops',
          'flops_per_image',
          'flops_per_sec',
          'compile_seconds',
      ):
        assert _positive(step[key]), (kind, key, step[key])
      assert _close(
          step['images_per_sec'],
          step['images_per_call'] / step['seconds_median'],
      )
      assert _close(
          step['flops_per_sec'], step['flops'] / step['seconds_median']
      )
      assert set(step['fraction_of_matmul']) == set(peaks)
      for dtype, fraction in step['fraction_of_matmul'].items():
        assert _close(fraction, step['flops_per_sec'] / peaks[dtype])
      assert step['xla_memory_bytes']['argument'] > 0
      memory = step['memory']
      for key in (
          'rss_runtime_bytes',
          'rss_with_state_bytes',
          'peak_rss_step_bytes',
          'peak_rss_process_bytes',
      ):
        assert _positive(memory[key]), (kind, key)
      assert memory['peak_rss_above_runtime_bytes'] == (
          memory['peak_rss_step_bytes'] - memory['rss_runtime_bytes']
      )
      held = memory['state_bytes']
      assert held['total'] == sum(v for k, v in held.items() if k != 'total')
      assert held['opt_state'] >= 2 * held['params'] > 0  # Adam's two moments
      assert math.isfinite(memory['peak_over_state'])
    assert (
        model['distill_step']['memory']['state_bytes']['teacher_params']
        == model['train_step']['memory']['state_bytes']['params']
    )

    ratio = model['distill_over_train']
    train, distill = model['train_step'], model['distill_step']
    assert _close(
        ratio['time_per_image'],
        (distill['seconds_median'] / distill['images_per_call'])
        / (train['seconds_median'] / train['images_per_call']),
    )
    assert _close(ratio['flops'], distill['flops'] / train['flops'])
    assert ratio['flops'] > 1  # the teacher's two forwards cost something
    assert _close(ratio['ideal'], 5 / 3)

    forward = model['forward']['seconds_median']
    assert _positive(forward) and _positive(model['forward']['flops'])
    sampling = model['sampling']
    for steps, seconds in sampling['seconds'].items():
      assert _positive(seconds)
      assert _close(
          sampling['overhead'][steps], seconds / (int(steps) * forward)
      )
      assert _close(
          sampling['images_per_sec'][steps], sampling['batch_size'] / seconds
      )

    speedup = model['student_speedup']
    assert _close(
        speedup['student_seconds'],
        sampling['seconds'][str(speedup['student_steps'])],
    )
    teacher = str(speedup['teacher_steps'])
    if speedup['teacher_source'] == 'measured':
      assert _close(speedup['teacher_seconds'], sampling['seconds'][teacher])
    else:
      longest = max(sampling['overhead'], key=int)
      assert _close(
          speedup['teacher_seconds'],
          int(teacher) * forward * sampling['overhead'][longest],
      )
    assert _close(
        speedup['speedup'],
        speedup['teacher_seconds'] / speedup['student_seconds'],
    )
    assert _close(speedup['ideal'], int(teacher) / speedup['student_steps'])


def test_chaos_with_three_kills_resumes_to_the_uninterrupted_result(tmp_path):
  out = tmp_path / 'chaos.json'
  result = run_python(['-m', 'benchmarks.chaos', '--kills=3', f'--out={out}'])
  assert result.returncode == 0, result.stderr[-4000:]
  report = json.loads(out.read_text())
  assert report['kills'] == 3
  assert report['resumes'] >= 3 and report['failed_resumes'] == []
  assert report['arrays_missing'] == [] and report['arrays_compared'] > 0
  assert report['max_difference'] == 0.0


def test_device_check_smoke_reports_speed_memory_and_correctness(tmp_path):
  out = tmp_path / 'device_check.json'
  result = run_python(
      ['-m', 'benchmarks.device_check', '--smoke', f'--out={out}']
  )
  assert result.returncode == 0, result.stderr[-4000:]
  report = json.loads(out.read_text())
  assert report['smoke'] is True and report['devices'] >= 1
  assert set(report['dtypes']) == {'float32', 'bfloat16'}
  for dtype in report['dtypes'].values():
    assert _positive(dtype['matmul_flops_per_sec_per_device'])
    for phase in ('train_step', 'distill_step'):
      step = dtype[phase]
      for key in ('images_per_sec', 'flops', 'compile_seconds', 'mfu'):
        assert _positive(step[key]), (phase, key)
      assert _close(
          step['images_per_sec'],
          step['images_per_call'] / step['seconds_median'],
      )
    assert set(dtype['sampling']) == {'1', '4', '8'}
  differences = report['correctness']['relative_difference']
  # On the CPU itself float32 is the reference: the same program, bit for bit.
  assert differences['float32'] == {'loss': 0.0, 'grad_norm': 0.0}
  assert 0 < differences['bfloat16']['grad_norm'] < 0.05


def _parameterization(root, out, *flags):
  return run_python([
      '-m',
      'benchmarks.parameterization',
      '--quick',
      f'--workdir_root={root}',
      f'--out={out}',
      *flags,
  ])


def test_parameterization_quick_trains_scores_and_resumes(tmp_path):
  root, out = tmp_path / 'runs', tmp_path / 'out'
  report_path = out / 'parameterization_quick.json'

  # Nothing trained yet and --notrain: every run is reported as pending.
  result = _parameterization(root, out, '--notrain')
  assert result.returncode == 0, result.stderr[-4000:]
  report = json.loads(report_path.read_text())
  assert report['pending'] == [
      'x_snr_trunc',
      'v_snr_trunc',
      'x chain',
      'x chain with longer final rounds',
      'x_snr_trunc seeds',
  ]

  result = _parameterization(root, out)
  assert result.returncode == 0, result.stderr[-4000:]
  report = json.loads(report_path.read_text())
  for key in ('date', 'git_commit', 'machine', 'versions', 'jax_version'):
    assert report[key], key
  assert report['pending'] == []
  # configs/test.py distills 4 -> 2 -> 1: the chain's teacher gets DDIM at
  # 1, 2 and 4 steps, the other the table's columns, 4 and 2.
  assert [(t['output'], t['weighting']) for t in report['teachers']] == [
      ('x', 'snr_trunc'),
      ('v', 'snr_trunc'),
  ]
  x_teacher, v_teacher = report['teachers']
  assert set(x_teacher['ddim']) == {'1', '2', '4'}  # the chain's teacher
  assert set(v_teacher['ddim']) == {'2', '4'}
  for teacher in report['teachers']:
    assert teacher['status'] == 'done'
    assert teacher['diverged_or_nan'] is False
    assert set(teacher['ancestral']) == {'0', '1'}
    best = teacher['ancestral'][teacher['best_fraction']]['fd']
    assert best == min(s['fd'] for s in teacher['ancestral'].values())
    for score in [*teacher['ddim'].values(), *teacher['ancestral'].values()]:
      assert _positive(score['fd']) and 0 <= score['accuracy'] <= 1
  assert set(report['chains']) == {'x'}
  for output, chain in report['chains'].items():
    assert chain['status'] == 'done' and chain['weighting'] == 'snr_trunc'
    assert set(chain['students']) == {'1', '2'}
    teacher = next(t for t in report['teachers'] if t['output'] == output)
    assert chain['ddim'] == teacher['ddim']
  # The x chain again from the same teacher, its rounds (both final: to 2
  # and to 1 step) twice as long.
  longer = report['longer_final_rounds']['x']
  assert longer['status'] == 'done' and longer['multiplier'] == 2
  assert set(longer['students']) == {'1', '2'}
  one_step = report['findings']['longer_final_rounds']['one_step_fd']['x']
  assert one_step == [
      report['chains']['x']['students']['1']['fd'],
      longer['students']['1']['fd'],
  ]
  # The x teacher again with seed 1, scored with DDIM at the table's steps
  # beside the table's own (seed 0).
  seeds = report['seed_repeats']['x_snr_trunc']
  assert seeds['status'] == 'done' and set(seeds['ddim']) == {'0', '1'}
  assert seeds['ddim']['0'] == {n: x_teacher['ddim'][n] for n in ('2', '4')}
  assert set(seeds['ddim']['1']) == {'2', '4'}
  assert seeds['ddim']['1']['4']['fd'] != seeds['ddim']['0']['4']['fd']
  assert set(report['findings']['seed_noise']['fds']) == {'x_snr_trunc'}
  # No ε + truncated SNR teacher in --quick: that finding stays open.
  assert report['findings']['eps_truncated_snr_diverges']['holds'] is None
  table = (out / 'parameterization_quick.md').read_text()
  assert '| x | truncated SNR | 2.53 / 9.92 |' in table
  assert (out / 'parameterization_quick.png').stat().st_size > 0

  # A rerun runs no main command: every phase and eval is kept.
  logs = {p.name: p.read_text() for p in (root / 'logs').iterdir()}
  result = _parameterization(root, out)
  assert result.returncode == 0, result.stderr[-4000:]
  assert 'diffusion_distillation.main' not in result.stdout
  assert {p.name: p.read_text() for p in (root / 'logs').iterdir()} == logs
  rerun = json.loads(report_path.read_text())
  assert rerun['teachers'] == report['teachers']
  assert rerun['chains'] == report['chains']
  assert rerun['longer_final_rounds'] == report['longer_final_rounds']
  assert rerun['seed_repeats'] == report['seed_repeats']
