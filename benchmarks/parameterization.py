"""The paper's Table 1 on the digits: output parameterization x loss weighting.

Trains a teacher for each output ('both', 'x', 'eps', 'v') and loss
weighting ('snr', 'snr_trunc', 'v_mse' = SNR+1) at the embedded default's
budget, distills five of them 64 -> 1 ('x', 'v', 'both' with truncated
SNR, 'eps' with it too unless it diverged, else with SNR+1, and 'eps' with
SNR), trains two teachers again with other seeds (their spread is the
table's seed noise), and scores them. Every run is the main command with
overrides, in <workdir_root>/<output>_<weighting>[_seed<N>]:

  python -m diffusion_distillation.main --config=configs/digits.py \\
      --workdir=ROOT/x_snr_trunc --mode=train|distill \\
      --config.model.mean_type=x --config.model.mean_loss_weight_type=snr_trunc

and its output is appended to ROOT/logs/<output>_<weighting>.<mode>.log,
where a divergence (exit status 3) is read back from: a rerun does not train
a diverged run again. Scoring is --mode=eval with eval overrides (the
workdir's run-config guard accepts eval and sample changes): the teacher
with DDIM at each step count and the ancestral sampler with the variance
interpolated in log space, sample.logvar_type='fixed_medium:f' (0: the lower
bound, 1: the upper), one eval per f; the teacher's evals run on a copy of
models/0 in ROOT/teacher_eval/<run> so that they neither resample the
students nor wait for the workdir's lock. Each eval's results are kept as
ROOT/.../eval/<label>.json and not redone.

  python -m benchmarks.parameterization          # 12 teachers, 5 chains
  python -m benchmarks.parameterization --quick  # tiny config, 2 x 1
  python -m benchmarks.parameterization --notrain --workdir_root=ROOT

With --notrain nothing is trained: what is finished is scored and the rest
reported as pending (a run another process is training, too). Results:
<out>/parameterization.{json,md,png} (parameterization_quick.* with
--quick).
"""

import dataclasses
import importlib
import importlib.metadata
import json
import math
import os
import re
import shutil
import subprocess
import sys

from absl import app
from absl import flags

from benchmarks import command
from benchmarks import parameterization_report
from benchmarks import timing
from diffusion_distillation.runs import workdir as workdir_lib
from diffusion_distillation.utils import files

OUTPUTS = ('both', 'x', 'eps', 'v')  # the paper's row order
WEIGHTINGS = ('snr', 'snr_trunc', 'v_mse')
CHAIN_WEIGHTING = 'snr_trunc'
EPS_FALLBACK_WEIGHTING = 'v_mse'  # for the eps chain if snr_trunc diverged


@dataclasses.dataclass(frozen=True)
class Budget:
  """What one variant trains and how it scores.

  config: the config file every command starts from.
  outputs, weightings: the teachers, outputs x weightings.
  chain_outputs: the outputs distilled down to 1 step (with truncated SNR,
    or SNR+1 for eps if truncated SNR diverged); reported under the
    output's name.
  extra_chains: more (output, weighting) runs distilled down to 1 step,
    reported under '<output>_<weighting>'.
  table_ddim_steps: the DDIM step counts of the table's columns.
  ancestral_num_steps: the ancestral sampler's step count.
  variance_fractions: the f of 'fixed_medium:f' searched.
  longer_final_rounds: the outputs whose chain is distilled again from the
    same teacher with the rounds to 2 and 1 step `final_rounds_multiplier`
    times as long (the paper's section 5.2: 2).
  seed_runs, other_seeds: the teachers trained again with each of
    `other_seeds` (config.seed; the table's use the config's), scored with DDIM
    at the table's step counts: the training-seed noise of the table.
  """

  config: str
  outputs: tuple
  weightings: tuple
  chain_outputs: tuple
  extra_chains: tuple
  table_ddim_steps: tuple
  ancestral_num_steps: int
  variance_fractions: tuple
  longer_final_rounds: tuple
  final_rounds_multiplier: int
  seed_runs: tuple
  other_seeds: tuple


FULL = Budget(
    config='configs/digits.py',
    outputs=OUTPUTS,
    weightings=WEIGHTINGS,
    chain_outputs=('x', 'v', 'both', 'eps'),
    # eps + SNR (the plain eps-MSE of DDPM) was the best teacher under DDIM
    # here, where eps with truncated SNR trained badly: distilled too, it
    # tests the paper's claim that eps degrades on a good eps teacher.
    extra_chains=(('eps', 'snr'),),
    table_ddim_steps=(64, 8),
    ancestral_num_steps=64,
    variance_fractions=(0.0, 0.25, 0.5, 0.75, 1.0),
    longer_final_rounds=('v',),  # the embedded default's output
    final_rounds_multiplier=2,
    # The embedded default's teacher and the best one under DDIM: one seed
    # each tells whether the top rows' gaps exceed the seed noise.
    seed_runs=(('v', 'snr_trunc'), ('eps', 'snr')),
    other_seeds=(1, 2),
)
# configs/test.py: a few steps of a tiny network, 20 samples per entry.
QUICK = Budget(
    config='configs/test.py',
    outputs=('x', 'v'),
    weightings=('snr_trunc',),
    chain_outputs=('x',),
    extra_chains=(),
    table_ddim_steps=(4, 2),
    ancestral_num_steps=4,
    variance_fractions=(0.0, 1.0),
    longer_final_rounds=('x',),
    final_rounds_multiplier=2,
    seed_runs=(('x', 'snr_trunc'),),
    other_seeds=(1,),
)

_HERE = os.path.dirname(os.path.abspath(__file__))


def _define_flags():
  flags.DEFINE_string(
      'workdir_root',
      None,
      'Folder of the runs, one workdir per output x weighting (default: '
      'benchmarks/results/tmp/parameterization[_quick]); rerun to resume.',
  )
  flags.DEFINE_string(
      'out',
      os.path.join(_HERE, 'results'),
      'Where parameterization.{json,md,png} go.',
  )
  flags.DEFINE_bool(
      'quick', False, 'configs/test.py, 2 outputs x 1 weighting: minutes.'
  )
  flags.DEFINE_bool(
      'train',
      True,
      'Train and distill what is missing; --notrain only scores what is '
      'finished and reports the rest as pending.',
  )
  flags.DEFINE_list(
      'variance_fractions',
      None,
      "The f of the ancestral sampler's 'fixed_medium:f' to search "
      '(default: 0,0.25,0.5,0.75,1; 0,1 with --quick).',
  )


_DIVERGED = re.compile(
    r'error: (train|distill) diverged: .* at step (\d+)'
    r'|error: (train|distill): \d+ of the last \d+ updates were non-finite'
)
_SKIPPED = re.compile(
    r'skipped (\d+) non-finite update\(s\) of the \d+ up to step (\d+)'
)
_ROUND = re.compile(r'Round \d+/\d+: \d+ -> (\d+) sampling steps')
_IN_USE = 'is in use'


def run_name(output: str, weighting: str) -> str:
  return f'{output}_{weighting}'


def longer_rounds_name(run: tuple, multiplier: int) -> str:
  """The workdir of `run`'s chain with longer final rounds."""
  return f'{run_name(*run)}_final_rounds_{multiplier}x'


def seed_name(run: tuple, seed: int) -> str:
  """The workdir of `run`'s teacher trained with config.seed=`seed`."""
  return f'{run_name(*run)}_seed{seed}'


def seed_overrides(seed: int) -> list:
  return [f'--config.seed={seed}']


def _log_path(root: str, name: str, mode: str) -> str:
  return os.path.join(root, 'logs', f'{name}.{mode}.log')


def finished_models(workdir: str) -> list:
  """The step counts of the workdir's finished models, ascending.

  Read from the folder names: orbax renames a model's folder to models/<N>
  once it is written, and opening a CheckpointManager here could clean up
  the temporary folder of a save that another process has in flight.
  """
  path = workdir_lib.models_dir(workdir)
  if not os.path.isdir(path):
    return []
  return sorted(
      int(name)
      for name in os.listdir(path)
      if name.isdigit()
      and os.path.exists(os.path.join(path, name, '_CHECKPOINT_METADATA'))
  )


def read_stop(log_text: str) -> dict | None:
  """The divergence a main command's log reports, or None.

  Returns:
    {'phase': 'train' | 'distill', 'step': the step it was detected at
    (None if the log does not say), 'round_student_steps': the distillation
    round's step count (None for train), 'message': the log's line}.
  """
  stop = None
  last_round, last_skip_step = None, None
  for line in log_text.splitlines():
    round_match = _ROUND.search(line)
    if round_match:
      last_round = int(round_match.group(1))
    skip_match = _SKIPPED.search(line)
    if skip_match:
      last_skip_step = int(skip_match.group(2))
    match = _DIVERGED.search(line)
    if match:
      phase = match.group(1) or match.group(3)
      stop = {
          'phase': phase,
          'step': int(match.group(2)) if match.group(2) else last_skip_step,
          'round_student_steps': last_round if phase == 'distill' else None,
          'message': line[line.index('error: ') :].strip(),
      }
  return stop


def skipped_updates(log_text: str) -> int:
  return sum(int(m.group(1)) for m in _SKIPPED.finditer(log_text))


def _read(path: str) -> str:
  if not os.path.exists(path):
    return ''
  with open(path, errors='replace') as f:
    return f.read()


def main_command(
    budget: Budget, workdir: str, mode: str, run: tuple, extra=()
) -> list:
  """The main command for `run` = (output, weighting), with overrides."""
  output, weighting = run
  return [
      sys.executable,
      '-m',
      'diffusion_distillation.main',
      f'--config={budget.config}',
      f'--workdir={workdir}',
      f'--mode={mode}',
      f'--config.model.mean_type={output}',
      f'--config.model.mean_loss_weight_type={weighting}',
      *extra,
  ]


class RunFailed(RuntimeError):
  """A main command failed for a reason other than divergence or a lock."""


def _run_main(budget, root, workdir, mode, run, extra=(), name=None) -> str:
  """Runs the main command, its output appended to ROOT/logs/<name>.<mode>.log
  (name: run_name(*run) by default) as it comes.

  Returns:
    'ok', 'diverged' (exit status 3 with a divergence line) or 'busy'
    (another process holds the workdir).

  Raises:
    RunFailed for any other failure, with the command's last line.
  """
  name = name or run_name(*run)
  log = _log_path(root, name, mode)
  os.makedirs(os.path.dirname(log), exist_ok=True)
  command = main_command(budget, workdir, mode, run, extra)
  timing.progress(' '.join(command[2:]))
  with open(log, 'a+') as f:
    start = f.tell()
    returncode = subprocess.run(
        command,
        cwd=timing.REPO,
        stdout=f,
        stderr=subprocess.STDOUT,
        check=False,
    ).returncode
    f.seek(start)
    text = f.read()
  if returncode == 0:
    return 'ok'
  if returncode == 3 and read_stop(text):
    return 'diverged'
  if returncode == 2 and _IN_USE in text:
    return 'busy'
  lines = [line for line in text.splitlines() if line.strip()]
  raise RunFailed(
      f'{name} --mode={mode} exited {returncode}: '
      f'{lines[-1] if lines else ""} (log: {log})'
  )


def teacher_state(root: str, run: tuple, name: str | None = None) -> dict:
  """{'status': 'done' | 'diverged' | 'pending', 'skipped_updates': ...,
  'diverged': read_stop's dict (when diverged)} of a teacher (in ROOT/<name>,
  default: the run's own workdir)."""
  name = name or run_name(*run)
  log = _read(_log_path(root, name, 'train'))
  state = {'skipped_updates': skipped_updates(log)}
  if 0 in finished_models(os.path.join(root, name)):
    return dict(state, status='done')
  stop = read_stop(log)
  if stop:
    return dict(state, status='diverged', diverged=stop)
  return dict(state, status='pending')


def chain_state(
    root: str, run: tuple, student_steps: list, name: str | None = None
) -> dict:
  """Like teacher_state, for the distillation chain in the same workdir (or
  in ROOT/<name>)."""
  name = name or run_name(*run)
  models = finished_models(os.path.join(root, name))
  log = _read(_log_path(root, name, 'distill'))
  state = {
      'students_finished': [n for n in student_steps if n in models],
      'skipped_updates': skipped_updates(log),
  }
  if all(n in models for n in student_steps):
    return dict(state, status='done')
  stop = read_stop(log)
  if stop:
    return dict(state, status='diverged', diverged=stop)
  return dict(state, status='pending')


def chain_run(root: str, output: str) -> tuple | None:
  """(output, weighting) of the output's chain; None while it is unknown
  (the eps chain waits for the eps/snr_trunc teacher)."""
  if output != 'eps':
    return (output, CHAIN_WEIGHTING)
  status = teacher_state(root, ('eps', CHAIN_WEIGHTING))['status']
  if status == 'pending':
    return None
  return (
      'eps',
      EPS_FALLBACK_WEIGHTING if status == 'diverged' else 'snr_trunc',
  )


def chain_runs(budget: Budget, root: str) -> dict:
  """{the chain's key in the report: its (output, weighting) run, or None
  while it is unknown}: the chain outputs', then the extra chains."""
  runs = {output: chain_run(root, output) for output in budget.chain_outputs}
  runs.update({run_name(*run): run for run in budget.extra_chains})
  return runs


def student_step_counts(config) -> list:
  """The chain's student step counts, start/2 ... end (as pipeline's)."""
  counts, n = [], config.distill.start_num_steps
  while n > config.distill.end_num_steps:
    n //= 2
    counts.append(n)
  return counts


def teacher_runs(budget: Budget) -> list:
  return [(o, w) for o in budget.outputs for w in budget.weightings]


def train_missing(budget: Budget, root: str, config):
  """Trains and distills what is not finished nor diverged: the chains'
  teachers first, then the chains, then the other teachers (an order that
  lets a cut run report the distillation argument early)."""
  chain_teachers = [
      r
      for r in teacher_runs(budget)
      if (
          r[0] in budget.chain_outputs
          and (r[1] == CHAIN_WEIGHTING or r == ('eps', EPS_FALLBACK_WEIGHTING))
      )
      or r in budget.extra_chains
  ]

  def train(run):
    if teacher_state(root, run)['status'] == 'pending':
      _run_main(budget, root, os.path.join(root, run_name(*run)), 'train', run)

  for run in chain_teachers:
    train(run)
  for run in chain_runs(budget, root).values():
    if run is None or teacher_state(root, run)['status'] != 'done':
      continue
    if chain_state(root, run, student_step_counts(config))['status'] == (
        'pending'
    ):
      workdir = os.path.join(root, run_name(*run))
      _run_main(budget, root, workdir, 'distill', run)
  for output in budget.longer_final_rounds:
    run = chain_run(root, output)
    if run is None or teacher_state(root, run)['status'] != 'done':
      continue
    name = longer_rounds_name(run, budget.final_rounds_multiplier)
    if chain_state(root, run, student_step_counts(config), name)['status'] == (
        'pending'
    ):
      _run_main(
          budget,
          root,
          os.path.join(root, name),
          'distill',
          run,
          longer_rounds_overrides(budget, root, run),
          name=name,
      )
  for run in teacher_runs(budget):
    if run not in chain_teachers:
      train(run)
  for run in budget.seed_runs:
    for seed in budget.other_seeds:
      name = seed_name(run, seed)
      if teacher_state(root, run, name)['status'] == 'pending':
        _run_main(
            budget,
            root,
            os.path.join(root, name),
            'train',
            run,
            seed_overrides(seed),
            name=name,
        )


def longer_rounds_overrides(budget: Budget, root: str, run: tuple) -> list:
  """The chain again, from `run`'s teacher, with longer final rounds."""
  return [
      (
          '--config.distill.final_rounds_updates_multiplier='
          f'{budget.final_rounds_multiplier}'
      ),
      (
          '--config.distill.teacher_checkpoint='
          f'{os.path.join(root, run_name(*run))}'
      ),
  ]


def _steps_tuple(steps) -> str:
  return '(' + ''.join(f'{n},' for n in steps) + ')'


def eval_overrides(
    *, ddim_steps, ancestral_steps, fraction=None, reference_steps
) -> list:
  """--config overrides of one --mode=eval: the teacher's DDIM and
  ancestral step counts, the ancestral variance fraction f, and the DDIM
  step count that fidelity_to_reference compares against (sampled whenever
  the teacher is there, so chosen to be one already planned or cheap)."""
  overrides = [
      f'--config.eval.teacher_num_steps={_steps_tuple(ddim_steps)}',
      f'--config.eval.ancestral_num_steps={_steps_tuple(ancestral_steps)}',
      f'--config.eval.reference_num_steps={reference_steps}',
  ]
  if fraction is not None:
    overrides.append(f'--config.sample.logvar_type=fixed_medium:{fraction:g}')
  return overrides


def cached_eval(
    budget, root, workdir, run, label, overrides, name=None
) -> dict | None:
  """The results.json of --mode=eval with `overrides` on `workdir`, kept as
  eval/<label>.json and reused while the overrides are the same; None when
  another process holds the workdir."""
  kept = os.path.join(workdir_lib.eval_dir(workdir), f'{label}.json')
  if os.path.exists(kept):
    with open(kept) as f:
      saved = json.load(f)
    if saved['overrides'] == overrides:
      return saved['results']
  if _run_main(budget, root, workdir, 'eval', run, overrides, name) == 'busy':
    return None
  with open(os.path.join(workdir_lib.eval_dir(workdir), 'results.json')) as f:
    results = json.load(f)
  files.write_json({'overrides': overrides, 'results': results}, kept)
  return results


def teacher_copy(root: str, run: tuple) -> str:
  """ROOT/teacher_eval/<run>: the run's config.json and models/0 alone,
  where its teacher is scored without the students and the lock."""
  name = run_name(*run)
  copy = os.path.join(root, 'teacher_eval', name)
  model = os.path.join(workdir_lib.models_dir(copy), '0')
  if not os.path.exists(model):
    os.makedirs(os.path.dirname(model), exist_ok=True)
    shutil.copy(
        os.path.join(root, name, workdir_lib.CONFIG),
        os.path.join(copy, workdir_lib.CONFIG),
    )
    partial = model + '.partial'
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(
        os.path.join(workdir_lib.models_dir(os.path.join(root, name)), '0'),
        partial,
    )
    os.rename(partial, model)  # a copy cut short is never taken as done
  return copy


def _score(row: dict) -> dict:
  """FD and label accuracy of one eval entry; a non-finite FD (NaN samples)
  is None with nonfinite=True."""
  fd = row['fd']
  finite = fd is not None and math.isfinite(fd)
  return {
      'fd': fd if finite else None,
      'accuracy': row['class_accuracy'],
      'nonfinite': not finite,
  }


def _best_fraction(ancestral: dict) -> str | None:
  finite = {f: s for f, s in ancestral.items() if s['fd'] is not None}
  return min(finite, key=lambda f: finite[f]['fd']) if finite else None


def score_teacher(budget, root, run, ddim_steps) -> dict:
  """DDIM at `ddim_steps` and the ancestral sampler at each variance
  fraction: {'ddim': {steps: score}, 'ancestral': {f: score},
  'best_fraction': f}."""
  copy = teacher_copy(root, run)
  ddim, ancestral = {}, {}
  for index, fraction in enumerate(budget.variance_fractions):
    # The first eval also runs DDIM (its longest run is the fidelity
    # reference); the others only the ancestral sampler, with a 1-step
    # reference, the cheapest.
    overrides = eval_overrides(
        ddim_steps=ddim_steps if index == 0 else (),
        ancestral_steps=(budget.ancestral_num_steps,),
        fraction=fraction,
        reference_steps=max(ddim_steps) if index == 0 else 1,
    )
    results = cached_eval(
        budget, root, copy, run, f'teacher_f{fraction:g}', overrides
    )
    for row in results['entries']:
      if row['method'] == 'ddim':
        ddim[row['num_steps']] = _score(row)
      else:
        ancestral[f'{fraction:g}'] = _score(row)
  return {
      'ddim': ddim,
      'ancestral': ancestral,
      'best_fraction': _best_fraction(ancestral),
      'real_vs_real_fd': results['real_vs_real_fd'],
  }


def score_chain(
    budget, root, run, start_num_steps, name=None, extra=()
) -> dict | None:
  """Every student's FD and accuracy ({steps: score}) of the chain in
  ROOT/<name> (default: the run's own workdir), whose commands take the
  `extra` overrides too; None when another process holds the workdir."""
  name = name or run_name(*run)
  overrides = list(extra) + eval_overrides(
      ddim_steps=(start_num_steps,),
      ancestral_steps=(),
      reference_steps=start_num_steps,
  )
  results = cached_eval(
      budget, root, os.path.join(root, name), run, 'chain', overrides, name
  )
  if results is None:
    return None
  return {
      row['model_steps']: _score(row)
      for row in results['entries']
      if row['model_steps']
  }


def collect(budget: Budget, root: str, config) -> dict:
  """Every teacher's and chain's state and, where finished, its scores."""
  students = student_step_counts(config)
  start = config.distill.start_num_steps
  ladder = sorted(set(students) | {start} | set(budget.table_ddim_steps))
  chains = _chain_states(budget, root, students)
  chain_teachers = {
      (c['output'], c['weighting']) for c in chains.values() if c['weighting']
  }
  teachers = [
      _teacher_entry(budget, root, run, ladder, run in chain_teachers)
      for run in teacher_runs(budget)
  ]
  by_run = {(t['output'], t['weighting']): t for t in teachers}
  for chain in chains.values():
    _score_chain_entry(budget, root, chain, by_run, ladder, start)
  return {
      'teachers': teachers,
      'chains': chains,
      'longer_final_rounds': _longer_rounds(budget, root, students, start),
      'seed_repeats': seed_repeats(budget, root, by_run, config.seed),
  }


def _chain_states(budget: Budget, root: str, students: list) -> dict:
  """{chain: its state}, before scoring."""
  chains = {}
  for key, run in chain_runs(budget, root).items():
    entry = {'output': run[0] if run else key, 'weighting': run and run[1]}
    if run is None:
      entry.update(status='pending', waits_for='eps_snr_trunc teacher')
    else:
      teacher = teacher_state(root, run)
      entry['teacher_status'] = teacher['status']
      if teacher['status'] == 'done':
        entry.update(chain_state(root, run, students))
      elif teacher['status'] == 'pending':
        entry['status'] = 'pending'
      else:
        entry['status'] = 'teacher diverged'
    chains[key] = entry
  return chains


def _teacher_entry(
    budget: Budget, root: str, run: tuple, ladder: list, in_chain: bool
) -> dict:
  """A teacher's state, the paper's values and, when trained, its scores:
  a chain's teacher gets the whole DDIM ladder (the chain's dashed line)."""
  entry = {
      'output': run[0],
      'weighting': run[1],
      'workdir': os.path.join(root, run_name(*run)),
      **teacher_state(root, run),
  }
  paper = parameterization_report.PAPER_TABLE_1[run]
  entry['paper'] = (
      {'stochastic': 'diverges', 'ddim': 'diverges'}
      if paper is None
      else {'stochastic': paper[0], 'ddim': paper[1]}
  )
  if entry['status'] == 'done':
    steps = ladder if in_chain else budget.table_ddim_steps
    entry.update(score_teacher(budget, root, run, tuple(steps)))
    scores = list(entry['ddim'].values()) + list(entry['ancestral'].values())
    entry['nonfinite_samples'] = any(s['nonfinite'] for s in scores)
  entry['diverged_or_nan'] = (
      None
      if entry['status'] == 'pending'
      else entry['status'] == 'diverged' or entry['nonfinite_samples']
  )
  return entry


def _score_chain_entry(
    budget: Budget, root: str, chain: dict, by_run: dict, ladder, start: int
):
  """Adds its teacher's DDIM line and, when distilled, its students'
  scores to `chain`."""
  run = (chain['output'], chain['weighting'])
  if 'ddim' in by_run.get(run, {}):  # the teacher's line, chain or not
    chain['ddim'] = {
        n: by_run[run]['ddim'][n] for n in ladder if n in by_run[run]['ddim']
    }
  if chain['status'] != 'done':
    return
  chain['students'] = score_chain(budget, root, run, start)
  if chain['students'] is None:
    chain['status'] = 'pending'  # another process holds the workdir
    del chain['students']


def _longer_rounds(
    budget: Budget, root: str, students: list, start: int
) -> dict:
  """{output: the chain distilled again with longer final rounds}."""
  longer = {}
  for output in budget.longer_final_rounds:
    run = chain_run(root, output)
    if run is None or teacher_state(root, run)['status'] != 'done':
      longer[output] = {'status': 'pending'}
      continue
    name = longer_rounds_name(run, budget.final_rounds_multiplier)
    entry = {
        'weighting': run[1],
        'multiplier': budget.final_rounds_multiplier,
        'workdir': os.path.join(root, name),
        **chain_state(root, run, students, name),
    }
    if entry['status'] == 'done':
      scores = score_chain(
          budget,
          root,
          run,
          start,
          name,
          longer_rounds_overrides(budget, root, run),
      )
      if scores is None:
        entry['status'] = 'pending'
      else:
        entry['students'] = scores
    longer[output] = entry
  return longer


def seed_repeats(
    budget: Budget, root: str, by_run: dict, table_seed: int
) -> dict:
  """{run name: {'status', 'ddim': {seed: {steps: score}}}} of each seed
  run: `table_seed` (the config's) is the table's teacher, the others are
  scored with DDIM at the table's step counts in their own workdirs."""
  repeats = {}
  for run in budget.seed_runs:
    ddim = {}
    if 'ddim' in by_run.get(run, {}):
      ddim[table_seed] = {
          n: score
          for n, score in by_run[run]['ddim'].items()
          if n in budget.table_ddim_steps
      }
    diverged = []
    for seed in budget.other_seeds:
      name = seed_name(run, seed)
      state = teacher_state(root, run, name)
      if state['status'] == 'diverged':
        diverged.append(seed)
      if state['status'] != 'done':
        continue
      overrides = seed_overrides(seed) + eval_overrides(
          ddim_steps=budget.table_ddim_steps,
          ancestral_steps=(),
          reference_steps=max(budget.table_ddim_steps),
      )
      results = cached_eval(
          budget,
          root,
          os.path.join(root, name),
          run,
          'teacher',
          overrides,
          name,
      )
      if results is not None:  # None: another process holds the workdir
        ddim[seed] = {
            row['num_steps']: _score(row)
            for row in results['entries']
            if row['method'] == 'ddim'
        }
    finished = len(ddim) + len(diverged) == 1 + len(budget.other_seeds)
    repeats[run_name(*run)] = {
        'output': run[0],
        'weighting': run[1],
        'status': 'done' if finished else 'pending',
        'diverged_seeds': diverged,
        'ddim': ddim,
    }
  return repeats


def _versions() -> dict:
  names = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy')
  return {name: importlib.metadata.version(name) for name in names}


def _budget(args) -> Budget:
  budget = QUICK if args.quick else FULL
  if args.variance_fractions:
    fractions = tuple(float(f) for f in args.variance_fractions)
    if not all(0.0 <= f <= 1.0 for f in fractions):
      raise app.UsageError('--variance_fractions must lie in [0, 1].')
    budget = dataclasses.replace(budget, variance_fractions=fractions)
  return budget


def _pending(report: dict) -> list:
  """What is not finished yet: teachers, chains, longer rounds, seeds."""
  return (
      [
          run_name(t['output'], t['weighting'])
          for t in report['teachers']
          if t['status'] == 'pending'
      ]
      + [
          f'{key} chain'
          for key, c in report['chains'].items()
          if c['status'] == 'pending'
      ]
      + [
          f'{output} chain with longer final rounds'
          for output, c in report['longer_final_rounds'].items()
          if c['status'] == 'pending'
      ]
      + [
          f'{name} seeds'
          for name, r in report['seed_repeats'].items()
          if r['status'] == 'pending'
      ]
  )


def main(args):
  budget = _budget(args)
  suffix = '_quick' if args.quick else ''
  root = os.path.abspath(
      args.workdir_root
      or os.path.join(_HERE, 'results', 'tmp', f'parameterization{suffix}')
  )
  module = importlib.import_module(
      budget.config.removesuffix('.py').replace('/', '.')
  )
  config = module.get_config()
  try:
    if args.train:
      train_missing(budget, root, config)
    report = collect(budget, root, config)
  except RunFailed as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  floors = [t['real_vs_real_fd'] for t in report['teachers'] if 'ddim' in t]
  report.update(
      variant='quick' if args.quick else 'full',
      **timing.provenance(),
      versions=_versions(),
      workdir_root=root,
      settings={
          'config': budget.config,
          'train_steps': config.train.num_steps,
          'distill': (
              f'{config.distill.start_num_steps} -> '
              f'{config.distill.end_num_steps}, '
              f'{config.distill.steps_per_round} updates per round'
          ),
          'num_samples': config.eval.num_samples,
          'eval_seed': config.eval.seed,
          'table_ddim_steps': list(budget.table_ddim_steps),
          'ancestral_num_steps': budget.ancestral_num_steps,
          'variance_fractions': list(budget.variance_fractions),
          'final_rounds_multiplier': budget.final_rounds_multiplier,
          'other_seeds': list(budget.other_seeds),
      },
      real_vs_real_fd=floors[0] if floors else None,
      pending=_pending(report),
  )
  report['findings'] = parameterization_report.findings(
      report, budget.table_ddim_steps[0]
  )
  os.makedirs(args.out, exist_ok=True)
  stem = os.path.join(args.out, f'parameterization{suffix}')
  table = parameterization_report.markdown(report)
  files.write_json(report, stem + '.json')
  files.write_atomically(stem + '.md', table)
  parameterization_report.plot(report, stem + '.png')
  print(table)
  print(f'Wrote {stem}.json, .md and .png')


if __name__ == '__main__':
  command.run(_define_flags, main)
