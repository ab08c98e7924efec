"""What --mode=eval writes: the results as JSON, a Markdown table and a plot.

Two layouts, one per kind of eval (loop.py, guided/evaluation.py):

  BY_STEPS     results.json, results.md, fd_vs_steps.png: FD (digits) or FID
               (tfds datasets) against sampling steps, one curve per way of
               sampling (distilled, undistilled DDIM, ancestral);
  BY_GUIDANCE  guided_results.json, guided_results.md, guided_vs_w.png: FD,
               accuracy and confidence against guidance strength w.

Each function reads the results dict that the eval returns, so a benchmark
can redraw a table or plot from a results.json.
"""

import dataclasses
import io
from collections.abc import Callable

from matplotlib import figure

from diffusion_distillation.utils import files


@dataclasses.dataclass(frozen=True)
class Report:
  """The three files of one kind of eval, named in its directory."""

  json_name: str
  table_name: str
  plot_name: str
  table: Callable[[dict], str]
  plot: Callable[[dict, str], None]

  def write(self, results: dict, directory: str) -> dict:
    """Writes the three files into `directory` (local or gs://); returns
    {file name: path}."""
    directory = files.as_path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        name: str(directory / name)
        for name in (self.json_name, self.table_name, self.plot_name)
    }
    files.write_json(results, paths[self.json_name])
    files.write_atomically(paths[self.table_name], self.table(results))
    self.plot(results, paths[self.plot_name])
    return paths


def _markdown(header: list, alignments: list, rows: list, note: str) -> str:
  """A Markdown table of string cells with a note below it."""
  line = lambda cells: '| ' + ' | '.join(cells) + ' |'
  lines = [line(header), '|' + '|'.join(alignments) + '|']
  lines += [line(cells) for cells in rows]
  return '\n'.join(lines + ['', note]) + '\n'


def _cell(row: dict | None, field: str, fmt: str) -> str:
  """`row[field]` formatted, or empty where there is no value."""
  value = None if row is None else row.get(field)
  return '' if value is None else fmt.format(value)


def _write_png(fig: figure.Figure, path: str):
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format='png')
  files.write_atomically(path, png.getvalue())


# ----------------------------------------------------------------------------
# Quality against sampling steps.


def _by_curve(results: dict) -> dict:
  """{'distilled' | 'ddim' | 'ancestral': {num_steps: row}}."""
  curves = {'distilled': {}, 'ddim': {}, 'ancestral': {}}
  for row in results['entries']:
    curve = 'distilled' if row['model_steps'] else row['method']
    curves[curve][row['num_steps']] = row
  return curves


def markdown_table(results: dict) -> str:
  """The scores per step count, one column group per curve."""
  if 'feature_network' in results:
    return _inception_table(results)
  return _classifier_table(results)


def _inception_table(results: dict) -> str:
  """FID, Inception Score, precision and recall per step count."""
  curves = _by_curve(results)
  paper = {int(n): fid for n, fid in results['paper_fid'].items()}
  step_counts = sorted(
      {n for curve in curves.values() for n in curve} | set(paper)
  )
  rows = []
  for n in step_counts:
    distilled, ddim = curves['distilled'].get(n), curves['ddim'].get(n)
    rows.append([
        str(n),
        _cell(distilled, 'fid', '{:.2f}'),
        f'{paper[n]:.2f}' if n in paper else '',
        _cell(ddim, 'fid', '{:.2f}'),
        _cell(curves['ancestral'].get(n), 'fid', '{:.2f}'),
        _cell(distilled, 'inception_score', '{:.2f}'),
        _cell(ddim, 'inception_score', '{:.2f}'),
        _cell(distilled, 'precision', '{:.3f}'),
        _cell(distilled, 'recall', '{:.3f}'),
    ])
  reference, network = results['reference'], results['feature_network']
  return _markdown(
      [
          'steps',
          'FID distilled',
          'FID distilled (paper)',
          'FID DDIM',
          'FID ancestral',
          'IS distilled',
          'IS DDIM',
          'precision distilled',
          'recall distilled',
      ],
      ['---:'] * 9,
      rows,
      f'{results["num_samples"]} samples per entry against'
      f' {reference["path"]} ({reference["num_images"]} reference images for'
      f' precision and recall); InceptionV3 weights {network["weights"]}'
      f' (fingerprint {network["fingerprint"]}).',
  )


def _classifier_table(results: dict) -> str:
  """FD, precision, recall and class accuracy per step count, one column
  group per curve (a dataset with a reference classifier of its own)."""
  curves = _by_curve(results)
  rows = []
  for n in sorted({n for curve in curves.values() for n in curve}):
    distilled, ddim = curves['distilled'].get(n), curves['ddim'].get(n)
    fidelity = distilled and distilled['fidelity_to_teacher']
    rows.append([
        str(n),
        _cell(distilled, 'fd', '{:.3f}'),
        _cell(ddim, 'fd', '{:.3f}'),
        _cell(curves['ancestral'].get(n), 'fd', '{:.3f}'),
        _cell(distilled, 'precision', '{:.3f}'),
        _cell(distilled, 'recall', '{:.3f}'),
        _cell(ddim, 'precision', '{:.3f}'),
        _cell(ddim, 'recall', '{:.3f}'),
        _cell(distilled, 'class_accuracy', '{:.3f}'),
        _cell(ddim, 'class_accuracy', '{:.3f}'),
        f'{fidelity["psnr"]:.1f}' if fidelity else '',
    ])
  return _markdown(
      [
          'steps',
          'FD distilled',
          'FD DDIM',
          'FD ancestral',
          'precision distilled',
          'recall distilled',
          'precision DDIM',
          'recall DDIM',
          'accuracy distilled',
          'accuracy DDIM',
          'PSNR to teacher (dB)',
      ],
      ['---:'] * 11,
      rows,
      f'Real-vs-real floor: FD {results["real_vs_real_fd"]:.3f}'
      f'{_floor_precision_recall(results)}'
      f' ({results["real_vs_real_count"]} training images against the'
      f' {results["real_test_count"]} held-out test images); reference'
      f' classifier ({results["reference_network"]["name"]}) test accuracy'
      f' {results["reference_network"]["test_accuracy"]:.3f};'
      f' {results["num_samples"]} samples per entry.',
  )


def _floor_precision_recall(results: dict) -> str:
  if results.get('real_vs_real_precision') is None:
    return ''  # results written before precision and recall were scored
  return (
      f', precision {results["real_vs_real_precision"]:.3f}, recall'
      f' {results["real_vs_real_recall"]:.3f}'
  )


def plot_fd_vs_steps(results: dict, path: str):
  """FD (a reference classifier's) or FID against sampling steps (log2 x,
  log y), as the paper's figure: distilled, undistilled DDIM, ancestral,
  and the real-data floor (FD) or the paper's distilled FIDs (CIFAR-10)."""
  fig = figure.Figure(figsize=(6, 4), dpi=120)
  ax = fig.add_subplot()
  styles = {
      'distilled': ('o-', 'distilled (1 model per step count)'),
      'ddim': ('s--', 'undistilled DDIM'),
      'ancestral': ('^:', 'undistilled ancestral'),
  }
  field = 'fid' if 'feature_network' in results else 'fd'
  for curve, rows in _by_curve(results).items():
    if rows:
      steps = sorted(rows)
      ax.plot(
          steps,
          [rows[n][field] for n in steps],
          styles[curve][0],
          label=styles[curve][1],
      )
  paper = {int(n): fid for n, fid in results.get('paper_fid', {}).items()}
  if paper:
    steps = sorted(paper)
    ax.plot(
        steps,
        [paper[n] for n in steps],
        'kx',
        label='distilled, the paper',
    )
  if 'real_vs_real_fd' in results:
    ax.axhline(
        results['real_vs_real_fd'],
        color='gray',
        lw=1,
        label='real vs real (floor)',
    )
  ax.set_xscale('log', base=2)
  ax.set_yscale('log')
  ax.set_xlabel('sampling steps')
  ax.set_ylabel(
      'FID (InceptionV3)'
      if field == 'fid'
      else f'FD ({results["reference_network"]["name"]} features)'.replace(
          '_', ' '
      )
  )
  ax.grid(True, which='both', alpha=0.3)
  ax.legend()
  _write_png(fig, path)


BY_STEPS = Report(
    'results.json',
    'results.md',
    'fd_vs_steps.png',
    markdown_table,
    plot_fd_vs_steps,
)


# ----------------------------------------------------------------------------
# Quality against guidance strength.


def curve_name(row: dict) -> str:
  """'teacher ddim', 'teacher ancestral', 'stage one ddim' or 'student ddim'
  / 'student stochastic'."""
  if row['model'] == 'guide':
    return 'stage one ddim'
  return f'{row["model"]} {row["method"]}'


def _curves_against_w(results: dict) -> dict:
  """{curve: {num_steps: {w: row}}}."""
  curves = {}
  for row in results['entries']:
    curve = curves.setdefault(curve_name(row), {})
    curve.setdefault(row['num_steps'], {})[row['w']] = row
  return curves


def guided_markdown_table(results: dict) -> str:
  """One row per way of sampling, FD / accuracy / confidence per w."""
  strengths = results['guidance']
  rows = []
  for curve, by_steps in _curves_against_w(results).items():
    for steps in sorted(by_steps, reverse=True):
      by_w = by_steps[steps]
      any_row = next(iter(by_w.values()))
      cells = [curve, str(steps), str(any_row['network_evaluations'])]
      for w in strengths:
        row = by_w.get(w)
        cells.append(
            ''
            if row is None
            else (
                f'{row["fd"]:.1f} / {row["class_accuracy"]:.3f} / '
                f'{row["mean_confidence"]:.3f}'
            )
        )
      rows.append(cells)
  return _markdown(
      ['sampler', 'steps', 'network evals']
      + [f'w={w:g} FD / acc. / conf.' for w in strengths],
      ['---', '---:', '---:'] + ['---:'] * len(strengths),
      rows,
      "FD: Fréchet distance in the digits classifier's features to the "
      f'{results["real_test_count"]} held-out test images (real-vs-real '
      f'floor {results["real_vs_real_fd"]:.2f}); acc.: the classifier\'s '
      'accuracy on the requested labels; conf.: its mean largest softmax '
      f'probability; {results["num_samples"]} samples per entry; network '
      'evaluations per sample.',
  )


def plot_against_w(results: dict, path: str):
  """Accuracy (top) and FD (bottom) against w, one column per student step
  count N: the N-step student with DDIM and the stochastic sampler,
  undistilled guided DDIM in N steps, and the guided teacher at
  reference_num_steps (the same line in every column)."""
  curves = _curves_against_w(results)
  student_steps = sorted(
      set(curves.get('student ddim', {}))
      | set(curves.get('student stochastic', {}))
  ) or sorted(curves.get('teacher ddim', {}))
  columns = len(student_steps)
  fig = figure.Figure(figsize=(3.2 * columns, 5.6), dpi=120)
  axes = fig.subplots(2, columns, squeeze=False, sharex=True)
  reference = results.get('reference_num_steps')
  lines = (  # (curve, step count or None for the reference, style, label)
      ('teacher ddim', None, ('k', '--', '.'), f'guided DDIM {reference}'),
      ('teacher ddim', 'n', ('C3', ':', 's'), 'guided DDIM, same steps'),
      ('student ddim', 'n', ('C0', '-', 'o'), 'student, DDIM'),
      ('student stochastic', 'n', ('C2', '-.', '^'), 'student, stochastic'),
  )
  for column, n in enumerate(student_steps):
    for curve, steps, (color, style, marker), label in lines:
      rows = curves.get(curve, {}).get(reference if steps is None else n)
      if not rows:
        continue
      ws = sorted(rows)
      for row_index, field in enumerate(('class_accuracy', 'fd')):
        axes[row_index][column].plot(
            ws,
            [rows[w][field] for w in ws],
            color=color,
            linestyle=style,
            marker=marker,
            label=label,
        )
    axes[0][column].set_title(f'{n} step{"s" if n > 1 else ""}')
    axes[1][column].axhline(
        results['real_vs_real_fd'], color='gray', lw=1, label='real vs real'
    )
    axes[1][column].set_yscale('log')
    axes[1][column].set_xlabel('guidance strength w')
    for ax in axes[:, column]:
      ax.grid(True, which='both', alpha=0.3)
  axes[0][0].set_ylabel('classifier accuracy')
  axes[1][0].set_ylabel('FD (digits classifier features)')
  axes[1][0].legend(fontsize=7)
  _write_png(fig, path)


BY_GUIDANCE = Report(
    'guided_results.json',
    'guided_results.md',
    'guided_vs_w.png',
    guided_markdown_table,
    plot_against_w,
)
