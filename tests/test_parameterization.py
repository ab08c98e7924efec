"""The parameterization benchmark's reading of logs, on the lines the
command really writes, and its findings, on hand-made reports (the script
itself runs in test_benchmarks.py)."""

import collections
import contextlib
import io
import logging

import jax.numpy as jnp
import ml_collections
import pytest

from benchmarks import parameterization
from benchmarks import parameterization_report
from diffusion_distillation.training import health
from diffusion_distillation.utils import cli


def _printed_error(stop) -> str:
  """What the command prints when `stop()` stops the run."""
  stderr = io.StringIO()
  with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit):
    with cli.one_line_errors():
      stop()
  return stderr.getvalue()


def _log_lines(caplog) -> str:
  """The warnings logged so far, as absl writes them."""
  return ''.join(
      f'W1201 health.py:1] {r.getMessage()}\n'
      for r in caplog.records
      if r.levelno == logging.WARNING
  )


def _train_log() -> str:
  """A teacher that diverged at step 400, as training/health.py reports it."""
  settings = ml_collections.ConfigDict({
      'learning_rate': 1e-3,
      'substeps': 1,
      'max_skipped_fraction': 0.1,
      'skip_nonfinite_updates': False,
  })
  params = {'w': jnp.ones(3)}
  guard = health.StateGuard('train', settings, params, 'w/teacher/300')
  nan_state = collections.namedtuple('State', 'params')(
      {'w': jnp.full(3, jnp.nan)}
  )
  return 'I1201 train.py] [300] train/loss=0.4\n' + _printed_error(
      lambda: guard.check(nan_state, 400)
  )


def _distill_log(caplog) -> str:
  """Rounds 64 -> 32 -> 16, the second skipping too many updates by step
  80, as the pipeline and training/health.py report it."""
  caplog.set_level(logging.WARNING)
  monitor = health.SkipMonitor('distill', substeps=10, max_fraction=0.1)
  for count in (0, 0, 0, 0, 0, 2):
    monitor.add(jnp.int32(count))
  monitor.check(60, 1e-3, 'w/distill/50')
  for count in (15, 15):
    monitor.add(jnp.int32(count))
  error = _printed_error(lambda: monitor.check(80, 1e-3, 'w/distill/50'))
  rounds = ''.join(
      f'I1201 pipeline.py:1] Round {i}/6: {2 * n} -> {n} sampling steps\n'
      for i, n in ((1, 32), (2, 16))
  )
  return rounds + _log_lines(caplog) + error


def test_read_stop_finds_the_divergence_and_its_step(caplog):
  stop = parameterization.read_stop(_train_log())
  assert stop['phase'] == 'train' and stop['step'] == 400
  assert stop['round_student_steps'] is None
  assert stop['message'].startswith('error: train diverged')
  distill_log = _distill_log(caplog)
  stop = parameterization.read_stop(distill_log)
  assert stop['phase'] == 'distill' and stop['step'] == 80
  assert stop['round_student_steps'] == 16
  assert parameterization.skipped_updates(distill_log) == 32
  assert (
      parameterization.read_stop('error: /w is in use by another run') is None
  )


def test_a_finished_model_is_read_from_its_folder_name(tmp_path):
  models = tmp_path / 'models'
  for name in ('0', '32', '16.orbax-checkpoint-tmp-1'):
    (models / name).mkdir(parents=True)
    (models / name / '_CHECKPOINT_METADATA').write_text('{}')
  (models / '8').mkdir()  # no metadata: not finished
  assert parameterization.finished_models(str(tmp_path)) == [0, 32]
  assert parameterization.finished_models(str(tmp_path / 'absent')) == []


def _teacher(output, weighting, fd=None, status='done', diverged=None):
  teacher = {
      'output': output,
      'weighting': weighting,
      'status': status,
      'diverged_or_nan': None if status == 'pending' else status != 'done',
  }
  if fd is not None:
    teacher['ddim'] = {64: {'fd': fd, 'accuracy': 0.99, 'nonfinite': False}}
  if diverged:
    teacher['diverged'] = diverged
  return teacher


def _chain(output, one_step_fd, teacher_fd, weighting='snr_trunc'):
  score = lambda fd: {'fd': fd, 'accuracy': 0.9, 'nonfinite': False}  # noqa: E731
  return {
      'output': output,
      'weighting': weighting,
      'status': 'done',
      'students': {1: score(one_step_fd), 2: score(teacher_fd)},
      'ddim': {64: score(teacher_fd), 1: score(100.0)},
  }


def test_findings_as_the_paper_has_them():
  report = {
      'teachers': [
          _teacher('x', 'snr_trunc', 9.0),
          _teacher('v', 'snr_trunc', 10.0),
          _teacher(
              'eps',
              'snr_trunc',
              status='diverged',
              diverged={'phase': 'train', 'step': 400},
          ),
      ],
      'chains': {'x': _chain('x', 10.0, 9.0), 'eps': _chain('eps', 30.0, 10.0)},
  }
  found = parameterization_report.findings(report, 64)
  assert found['eps_truncated_snr_diverges']['holds'] is True
  assert 'train step 400' in found['eps_truncated_snr_diverges']['detail']
  assert found['stable_choices_close']['holds'] is True  # 11 % apart
  assert found['x_truncated_snr_best_ddim']['holds'] is True
  ratios = found['eps_degrades_when_distilled']['one_step_over_best_teacher_fd']
  assert ratios == {'x': 10.0 / 9.0, 'eps': 3.0}
  assert found['eps_degrades_when_distilled']['holds'] is True


def test_findings_that_do_not_hold_or_are_not_known_yet():
  report = {
      'teachers': [
          _teacher('x', 'snr_trunc', 20.0),
          _teacher('v', 'snr_trunc', 10.0),
          _teacher('eps', 'snr_trunc', 12.0),
          _teacher('both', 'snr', status='pending'),
      ],
      'chains': {'x': _chain('x', 10.0, 9.0)},
  }
  found = parameterization_report.findings(report, 64)
  assert found['eps_truncated_snr_diverges']['holds'] is False
  assert found['stable_choices_close']['holds'] is False  # 100 % apart
  assert 'so far: 3 of 4' in found['stable_choices_close']['detail']
  assert found['x_truncated_snr_best_ddim']['best'] == 'v_snr_trunc'
  assert found['eps_degrades_when_distilled']['holds'] is None


def test_longer_final_rounds_are_reported_beside_the_same_teachers_chain():
  score = lambda fd: {'fd': fd, 'accuracy': 0.9, 'nonfinite': False}  # noqa: E731
  report = {
      'teachers': [_teacher('v', 'snr_trunc', 9.0)],
      'chains': {'v': _chain('v', 10.0, 9.0)},
      'longer_final_rounds': {
          'v': {
              'status': 'done',
              'weighting': 'snr_trunc',
              'students': {2: score(9.0), 1: score(9.5)},
          }
      },
      'settings': {'final_rounds_multiplier': 2},
  }
  found = parameterization_report.findings(report, 64)['longer_final_rounds']
  assert found['one_step_fd'] == {'v': (10.0, 9.5)}
  assert '1-step FD 10.00 with every round as long, 9.50' in found['detail']
  assert '(-5%)' in found['detail']
  report['findings'] = {'longer_final_rounds': found}
  lines = parameterization_report._longer_rounds_lines(report)
  assert '| 1 | 10.00 (0.900) | 9.50 (0.900) |' in lines
  assert '| 2 | 9.00 (0.900) | 9.00 (0.900) |' in lines


def test_the_stable_choices_are_the_papers_even_when_eps_trains_here():
  report = {
      'teachers': [
          _teacher('x', 'snr_trunc', 9.0),
          _teacher('v', 'snr_trunc', 10.0),
          _teacher('eps', 'snr_trunc', 70.0),  # trained, badly
          _teacher('eps', 'v_mse', 40.0),
      ],
      'chains': {},
  }
  findings = parameterization_report.findings(report, 64)
  assert findings['eps_truncated_snr_diverges']['detail'] == (
      'ε + truncated SNR trained without diverging (DDIM-64 FD 70.00)'
  )
  found = findings['stable_choices_close']
  assert found['holds'] is False
  assert found['detail'].startswith('DDIM-64 FD 9.00-40.00, spread 344%')
  assert 'without ε 9.00-10.00, spread 11%' in found['detail']


def test_an_extra_eps_chain_counts_for_the_distillation_finding(tmp_path):
  report = {
      'teachers': [_teacher('x', 'snr_trunc', 9.0)],
      'chains': {
          'x': _chain('x', 12.0, 9.0),
          'eps': _chain('eps', 700.0, 70.0),
          'eps_snr': _chain('eps', 10.0, 9.0, weighting='snr'),
      },
      'real_vs_real_fd': 6.0,
  }
  found = parameterization_report.findings(report, 64)[
      'eps_degrades_when_distilled'
  ]
  assert set(found['one_step_over_best_teacher_fd']) == {'x', 'eps', 'eps_snr'}
  # The good eps teacher's chain stays closer to it than x's: not every eps
  # chain degrades most, so the finding does not hold.
  assert found['holds'] is False
  report['chains']['eps_snr'] = _chain('eps', 40.0, 9.0, weighting='snr')
  assert parameterization_report.findings(report, 64)[
      'eps_degrades_when_distilled'
  ]['holds']
  parameterization_report.plot(report, str(tmp_path / 'chains.png'))
  assert (tmp_path / 'chains.png').stat().st_size > 0


def test_the_seed_noise_is_each_repeated_teachers_spread():
  score = lambda fd: {64: {'fd': fd, 'accuracy': 0.9, 'nonfinite': False}}  # noqa: E731
  report = {
      'teachers': [_teacher('v', 'snr_trunc', 8.0)],
      'chains': {},
      'seed_repeats': {
          'v_snr_trunc': {
              'output': 'v',
              'weighting': 'snr_trunc',
              'status': 'done',
              'ddim': {0: score(8.0), 1: score(8.8), 2: score(8.4)},
          },
          'eps_snr': {  # one seed scored so far: no spread yet
              'output': 'eps',
              'weighting': 'snr',
              'status': 'pending',
              'ddim': {0: score(8.3)},
          },
      },
  }
  found = parameterization_report.findings(report, 64)['seed_noise']
  assert found['fds'] == {'v_snr_trunc': {0: 8.0, 1: 8.8, 2: 8.4}}
  assert abs(found['spread']['v_snr_trunc'] - 0.1) < 1e-9
  assert abs(found['mean']['v_snr_trunc'] - 8.4) < 1e-9
  assert found['detail'] == (
      'DDIM-64 FD, v + truncated SNR: 8.00 / 8.80 / 8.40 over seeds 0, 1, 2'
      ' (mean 8.40, spread 10%)'
  )
