"""The report of benchmarks/parameterization.py: the paper's Table 1 beside
ours, the paper's findings checked, and the figure of FD against steps.

Pure functions of the report dict that parameterization.collect builds
(before it is written as JSON: step counts are ints).
"""

from matplotlib import figure

OUTPUT_NAMES = {'both': 'both (x, ε)', 'x': 'x', 'eps': 'ε', 'v': 'v'}
WEIGHTING_NAMES = {
    'snr': 'SNR',
    'snr_trunc': 'truncated SNR',
    'v_mse': 'SNR+1',
}
# Table 1 of the paper: undistilled CIFAR-10, FID / IS (stochastic sampler,
# DDIM sampler); None: diverges.
PAPER_TABLE_1 = {
    ('both', 'snr'): ('2.54 / 9.88', '2.78 / 9.56'),
    ('both', 'snr_trunc'): ('2.47 / 9.85', '2.76 / 9.49'),
    ('both', 'v_mse'): ('2.52 / 9.79', '2.87 / 9.45'),
    ('x', 'snr'): ('2.65 / 9.80', '2.75 / 9.56'),
    ('x', 'snr_trunc'): ('2.53 / 9.92', '2.51 / 9.58'),
    ('x', 'v_mse'): ('2.56 / 9.84', '2.65 / 9.52'),
    ('eps', 'snr'): ('2.59 / 9.84', '2.91 / 9.52'),
    ('eps', 'snr_trunc'): None,
    ('eps', 'v_mse'): ('2.56 / 9.77', '3.27 / 9.41'),
    ('v', 'snr'): ('2.65 / 9.86', '3.05 / 9.56'),
    ('v', 'snr_trunc'): ('2.45 / 9.80', '2.75 / 9.52'),
    ('v', 'v_mse'): ('2.49 / 9.77', '2.87 / 9.43'),
}
# "Close together": the stable choices' DDIM FIDs span 2.51-3.27 in the
# paper, (max - min) / min = 0.30; ours are called close if they span no
# more.
PAPER_DDIM_SPREAD = (3.27 - 2.51) / 2.51


def _table_fd(teacher: dict, steps: int) -> float | None:
  score = teacher.get('ddim', {}).get(steps)
  return score and score['fd']


def findings(report: dict, table_steps: int) -> dict:
  """The paper's findings, each {'holds': True | False | None (not known
  yet), 'detail': str}."""
  return {
      'eps_truncated_snr_diverges': _eps_truncated_snr_diverges(
          report, table_steps
      ),
      **_stable_choices(report, table_steps),
      'eps_degrades_when_distilled': _eps_degrades_when_distilled(report),
      'longer_final_rounds': _longer_final_rounds(report),
      'seed_noise': _seed_noise(report, table_steps),
  }


def _eps_truncated_snr_diverges(report: dict, table_steps: int) -> dict:
  eps = next(
      (
          t
          for t in report['teachers']
          if (t['output'], t['weighting']) == ('eps', 'snr_trunc')
      ),
      None,
  )
  if eps is None or eps['diverged_or_nan'] is None:
    return {'holds': None, 'detail': 'ε + truncated SNR not finished'}
  stop = eps.get('diverged')
  if stop:
    detail = (
        f'ε + truncated SNR diverged at {stop["phase"]} step {stop["step"]}'
    )
  elif eps['diverged_or_nan']:
    detail = 'ε + truncated SNR gave NaN samples'
  else:
    detail = 'ε + truncated SNR trained without diverging' + _fd_note(
        eps, table_steps
    )
  return {'holds': eps['diverged_or_nan'], 'detail': detail}


def _stable_choices(report: dict, table_steps: int) -> dict:
  """Whether the paper's stable choices (every row its Table 1 does not
  mark as diverging, whether or not it diverged here) are close, and
  whether x + truncated SNR is the best of them under DDIM."""
  teachers = report['teachers']
  scored = [t for t in teachers if _table_fd(t, table_steps) is not None]
  so_far = (
      ''
      if all(t['status'] != 'pending' for t in teachers)
      else f' (so far: {len(scored)} of {len(teachers)} teachers scored)'
  )
  fds = {
      f"{t['output']}_{t['weighting']}": _table_fd(t, table_steps)
      for t in scored
      if not t['diverged_or_nan']
      and PAPER_TABLE_1[(t['output'], t['weighting'])] is not None
  }
  if len(fds) < 2:
    unknown = {'holds': None, 'detail': 'fewer than 2 stable teachers scored'}
    return {
        'stable_choices_close': unknown,
        'x_truncated_snr_best_ddim': dict(unknown),
    }
  low, high, spread = _spread(fds.values())
  detail = f'DDIM-{table_steps} FD {low:.2f}-{high:.2f}, spread {spread:.0%}'
  not_eps = [fd for name, fd in fds.items() if not name.startswith('eps_')]
  if len(not_eps) >= 2 and len(not_eps) < len(fds):
    low, high, rest = _spread(not_eps)
    detail += f'; without ε {low:.2f}-{high:.2f}, spread {rest:.0%}'
  best = min(fds, key=fds.get)
  return {
      'stable_choices_close': {
          'holds': spread <= PAPER_DDIM_SPREAD,
          'spread': spread,
          'detail': (
              detail
              + f" (the paper's DDIM FIDs: {PAPER_DDIM_SPREAD:.0%})"
              + so_far
          ),
      },
      'x_truncated_snr_best_ddim': {
          'holds': best == 'x_snr_trunc',
          'best': best,
          'detail': (
              f'best DDIM-{table_steps} FD: {best} {fds[best]:.2f}' + so_far
          ),
      },
  }


def _eps_degrades_when_distilled(report: dict) -> dict:
  """Whether every ε chain, whatever its weighting, ends further from its
  teacher than every other output's."""
  ratios = {}  # by chain key: 'eps', or 'eps_snr' for an extra chain
  eps_keys = []
  for key, chain in report['chains'].items():
    if chain.get('students') and chain.get('ddim'):
      one = chain['students'].get(1, {}).get('fd')
      teacher_best = min(
          (s['fd'] for s in chain['ddim'].values() if s['fd'] is not None),
          default=None,
      )
      if one is not None and teacher_best:
        ratios[key] = one / teacher_best
        if chain['output'] == 'eps':
          eps_keys.append(key)
  others = [v for k, v in ratios.items() if k not in eps_keys]
  if not eps_keys or not others:
    return {
        'holds': None,
        'detail': 'an ε chain and another are not both scored',
        'one_step_over_best_teacher_fd': ratios,
    }
  return {
      'holds': min(ratios[k] for k in eps_keys) > max(others),
      'one_step_over_best_teacher_fd': ratios,
      'detail': (
          "1-step student FD over the teacher's best DDIM FD: "
          + ', '.join(f'{k} {v:.2f}' for k, v in ratios.items())
      ),
  }


def _seed_noise(report: dict, steps: int) -> dict:
  """The DDIM-`steps` FD of each teacher trained with several seeds: {'holds':
  None (a measurement), 'fds': {run name: {seed: fd}}, 'mean': {run name:
  mean FD}, 'spread': {run name: (highest - lowest) / lowest}, 'detail':
  str}."""
  fds, mean, spread, parts = {}, {}, {}, []
  for name, repeat in report.get('seed_repeats', {}).items():
    by_seed = {
        seed: scores[steps]['fd']
        for seed, scores in sorted(repeat['ddim'].items())
        if scores.get(steps) and scores[steps]['fd'] is not None
    }
    if len(by_seed) < 2:
      continue
    fds[name] = by_seed
    mean[name] = sum(by_seed.values()) / len(by_seed)
    low, high, spread[name] = _spread(by_seed.values())
    runs = f'{OUTPUT_NAMES[repeat["output"]]} + '
    runs += WEIGHTING_NAMES[repeat['weighting']]
    parts.append(
        f'{runs}: {" / ".join(f"{fd:.2f}" for fd in by_seed.values())} over'
        f' seeds {", ".join(str(seed) for seed in by_seed)} (mean'
        f' {mean[name]:.2f}, spread {spread[name]:.0%})'
    )
  return {
      'holds': None,
      'fds': fds,
      'mean': mean,
      'spread': spread,
      'detail': (
          f'DDIM-{steps} FD, ' + '; '.join(parts)
          if parts
          else 'no teacher scored with more than one seed'
      ),
  }


def _fd_note(teacher: dict, steps: int) -> str:
  fd = _table_fd(teacher, steps)
  return '' if fd is None else f' (DDIM-{steps} FD {fd:.2f})'


def _spread(fds) -> tuple:
  """(lowest, highest, (highest - lowest) / lowest) of some FDs."""
  low, high = min(fds), max(fds)
  return low, high, (high - low) / low


def _longer_final_rounds(report: dict) -> dict:
  """The 1-step FD of each chain distilled again with longer final rounds,
  against the same teacher's chain with every round as long: {'holds':
  None (a measurement, not a finding of the paper's), 'one_step_fd':
  {output: (as long, longer)}, 'detail': str}."""
  pairs = {}
  for output, longer in report.get('longer_final_rounds', {}).items():
    base = report['chains'].get(output, {}).get('students', {}).get(1)
    new = longer.get('students', {}).get(1)
    if base and new and base['fd'] is not None and new['fd'] is not None:
      pairs[output] = (base['fd'], new['fd'])
  if not pairs:
    return {
        'holds': None,
        'one_step_fd': {},
        'detail': 'no chain with longer final rounds scored',
    }
  multiplier = report['settings']['final_rounds_multiplier']
  return {
      'holds': None,
      'one_step_fd': pairs,
      'detail': '; '.join(
          f'{OUTPUT_NAMES[output]}: 1-step FD {base:.2f} with every round '
          f'as long, {new:.2f} with the rounds to 2 and 1 step '
          f'{multiplier}x as long ({(new - base) / base:+.0%})'
          for output, (base, new) in pairs.items()
      ),
  }


def _weighting_name(chain: dict) -> str:
  return WEIGHTING_NAMES.get(chain['weighting'], 'weighting not known yet')


def _fd_cell(score: dict | None) -> str:
  if not score:
    return ''
  return 'NaN' if score['nonfinite'] else f'{score["fd"]:.2f}'


def _verdict(finding: dict) -> str:
  holds = finding['holds']
  word = 'not known yet' if holds is None else 'holds' if holds else 'does not'
  return f'{word} ({finding["detail"]})'


def markdown(report: dict) -> str:
  """Table 1 laid out as the paper's, the paper's values beside ours, the
  findings line, and the chains."""
  high, low = report['settings']['table_ddim_steps']
  ancestral_steps = report['settings']['ancestral_num_steps']
  lines = [
      (
          f'{report["date"]}, commit {report["git_commit"]},'
          f' {report["machine"]["cpu"]} ({report["machine"]["cpu_count"]}'
          f' cores); {report["settings"]["config"]},'
          f' {report["settings"]["num_samples"]} samples per entry, FD in the'
          " digits classifier's features (floor"
          f' {report["real_vs_real_fd"] or float("nan"):.2f}).'
      ),
      '',
      (
          '| output | weighting | stochastic: paper FID / IS | stochastic: FD'
          f' (ancestral {ancestral_steps} steps, best f) | DDIM: paper FID / IS'
          f' | DDIM: FD {high} steps | FD {low} steps | accuracy (DDIM'
          f' {high}) |'
      ),
      '|---|---|---|---|---|---|---|---|',
  ]
  for t in report['teachers']:
    if t['status'] == 'diverged':
      stop = t['diverged']
      ours = f'diverges (step {stop["step"]})'
      ddim_high, ddim_low, accuracy = ours, '', ''
    elif t['status'] == 'pending':
      ours = ddim_high = 'pending'
      ddim_low = accuracy = ''
    else:
      best = t['best_fraction']
      ours = f'{_fd_cell(t["ancestral"][best])} (f={best})' if best else 'NaN'
      ddim_high = _fd_cell(t['ddim'].get(high))
      ddim_low = _fd_cell(t['ddim'].get(low))
      score = t['ddim'].get(high)
      accuracy = f'{score["accuracy"]:.3f}' if score else ''
    lines.append(
        f'| {OUTPUT_NAMES[t["output"]]} | {WEIGHTING_NAMES[t["weighting"]]} '
        f'| {t["paper"]["stochastic"]} | {ours} | {t["paper"]["ddim"]} '
        f'| {ddim_high} | {ddim_low} | {accuracy} |'
    )
  found = report['findings']
  lines += [
      '',
      "The paper's findings here: ε + truncated SNR diverges: "
      f'{_verdict(found["eps_truncated_snr_diverges"])}; the stable choices '
      f'close together: {_verdict(found["stable_choices_close"])}; x + '
      'truncated SNR best under DDIM: '
      f'{_verdict(found["x_truncated_snr_best_ddim"])}; ε degrades most '
      'when distilled to 1 step: '
      f'{_verdict(found["eps_degrades_when_distilled"])}.',
      '',
      f'Training-seed noise: {found["seed_noise"]["detail"]}.',
      '',
      (
          'Distillation chains (FD; accuracy in parentheses), each with '
          'undistilled DDIM of the same teacher:'
      ),
      '',
  ]
  chains = report['chains']
  header = '| steps |'
  rule = '|---:|'
  for chain in chains.values():
    label = f'{OUTPUT_NAMES[chain["output"]]} ({_weighting_name(chain)})'
    header += f' {label} student | {label} DDIM |'
    rule += '---:|---:|'
  lines += [header, rule]
  steps = sorted(
      {int(n) for c in chains.values() for n in c.get('ddim', {})}
      | {int(n) for c in chains.values() for n in c.get('students', {})}
  )

  for n in steps:
    row = f'| {n} |'
    for chain in chains.values():
      row += (
          f' {_score_cell(chain.get("students", {}).get(n))} '
          f'| {_score_cell(chain.get("ddim", {}).get(n))} |'
      )
    lines.append(row)
  lines += _longer_rounds_lines(report)
  not_done = (
      [
          f'{OUTPUT_NAMES[c["output"]]} chain: {c["status"]}'
          for c in chains.values()
          if c['status'] != 'done'
      ]
      + [
          f'{t["output"]}_{t["weighting"]}: pending'
          for t in report['teachers']
          if t['status'] == 'pending'
      ]
      + [
          f'{name} with other seeds: pending'
          for name, repeat in report.get('seed_repeats', {}).items()
          if repeat['status'] != 'done'
      ]
  )
  if not_done:
    lines += ['', 'Not finished when scored: ' + '; '.join(not_done) + '.']
  return '\n'.join(lines) + '\n'


def _longer_rounds_lines(report: dict) -> list:
  """The chains distilled again with longer final rounds, beside the same
  teacher's chain (FD; accuracy in parentheses)."""
  lines = []
  multiplier = report['settings']['final_rounds_multiplier']
  for output, longer in report.get('longer_final_rounds', {}).items():
    if not longer.get('students'):
      continue
    base = report['chains'].get(output, {}).get('students', {})
    lines += [
        '',
        (
            f'{OUTPUT_NAMES[output]} ({WEIGHTING_NAMES[longer["weighting"]]}) '
            f'distilled again with the rounds to 2 and 1 step {multiplier}x as '
            "long (the paper's section 5.2), from the same teacher:"
        ),
        '',
        f'| steps | every round as long | final rounds {multiplier}x |',
        '|---:|---:|---:|',
    ]
    for n in sorted(longer['students'], reverse=True):
      lines.append(
          f'| {n} | {_score_cell(base.get(n))} '
          f'| {_score_cell(longer["students"][n])} |'
      )
  if lines:
    detail = report['findings']['longer_final_rounds']['detail']
    lines += ['', f'{detail[0].upper()}{detail[1:]}.']
  return lines


def _score_cell(score: dict | None) -> str:
  if not score:
    return ''
  return f'{_fd_cell(score)} ({score["accuracy"]:.3f})'


def plot(report: dict, path: str):
  """FD against steps: one solid line per chain's students, the same
  teacher's undistilled DDIM dashed in the same colour."""
  fig = figure.Figure(figsize=(8.5, 4.2), dpi=120)
  ax = fig.add_subplot()
  colours = {'x': 'C0', 'v': 'C1', 'both': 'C2', 'eps': 'C3'}
  for index, (key, chain) in enumerate(report['chains'].items()):
    label = f'{OUTPUT_NAMES[chain["output"]]}, {_weighting_name(chain)}'
    for curve, style, suffix in (
        ('students', 'o-', 'distilled'),
        ('ddim', 's--', 'DDIM'),
    ):
      points = sorted(
          (int(n), s['fd'])
          for n, s in chain.get(curve, {}).items()
          if s['fd'] is not None
      )
      if points:
        ax.plot(
            *zip(*points),
            style,
            # An extra chain (key '<output>_<weighting>') gets a colour of
            # its own.
            color=colours.get(key, f'C{4 + index}'),
            label=f'{label} {suffix}',
        )
  if report['real_vs_real_fd']:
    ax.axhline(
        report['real_vs_real_fd'], color='gray', lw=1, label='real vs real'
    )
  ax.set_xscale('log', base=2)
  ax.set_yscale('log')
  ax.set_xlabel('sampling steps')
  ax.set_ylabel('FD (digits classifier features)')
  ax.grid(True, which='both', alpha=0.3)
  # Beside the axes: inside, it would hide the top lines.
  ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0))
  fig.tight_layout()
  fig.savefig(path)
