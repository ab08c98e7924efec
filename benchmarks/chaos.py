"""Chaos: SIGKILL a run at random moments, resume it each time, compare.

Runs the command line on configs/test.py (teacher, distillation 4 -> 1,
samples) once uninterrupted, then again in a second workdir, killing it
--kills times: half at a random moment, half the instant a checkpoint
write starts (an orbax temporary folder appears). After each kill the same
command is started again, as a user would; after the last one it runs to
the end. Every model's parameters and every sample file are then compared
with the uninterrupted run's.

  python -m benchmarks.chaos [--kills=10] [--seed=0]

Prints the kills, the resumes (reruns that did not fail) and the largest
difference; writes benchmarks/results/chaos.json.
"""

import glob
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
from absl import flags

from benchmarks import command
from benchmarks import timing
from configs import test as test_config
from diffusion_distillation import network as network_lib
from diffusion_distillation.runs import workdir as workdir_lib


def _define_flags():
  """The command's flags; defined only when it runs (benchmarks/command.py)."""
  flags.DEFINE_integer('kills', 10, 'SIGKILLs to send, at random moments')
  flags.DEFINE_integer('seed', 0, 'seed of the random moments')
  flags.DEFINE_string(
      'out', os.path.join(timing.RESULTS, 'chaos.json'), 'the JSON to write'
  )


# Long enough that there is something to interrupt in every phase.
_OVERRIDES = {
    'train.num_steps': 12,
    'train.substeps': 1,
    'distill.steps_per_round': 6,
    'distill.substeps': 1,
    'checkpoint.every_steps': 2,
    'checkpoint.max_to_keep': 2,
}


def _command(workdir):
  return [
      sys.executable,
      '-m',
      'diffusion_distillation.main',
      '--config=configs/test.py',
      f'--workdir={workdir}',
      '--mode=all',
  ] + [f'--config.{k}={v}' for k, v in _OVERRIDES.items()]


def _run_to_end(workdir) -> float:
  start = time.time()
  subprocess.run(
      _command(workdir),
      cwd=timing.REPO,
      check=True,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
  )
  return time.time() - start


def _write_folders(workdir) -> set:
  """(path, inode) of every orbax temporary folder: a write in progress, or
  one that an earlier kill left behind."""
  found = set()
  for path in glob.glob(os.path.join(workdir, '*', '*orbax-checkpoint-tmp*')):
    try:
      found.add((path, os.stat(path).st_ino))
    except FileNotFoundError:  # finished or cleaned meanwhile
      pass
  return found


def _kill_once(workdir, *, at_write: bool, delay: float, deadline: float):
  """Starts the command and SIGKILLs it; returns (killed, exit status)."""
  left_behind = _write_folders(workdir)  # not a write of this run
  process = subprocess.Popen(
      _command(workdir),
      cwd=timing.REPO,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
  )
  start = time.time()
  while process.poll() is None and time.time() < start + deadline:
    if (at_write and _write_folders(workdir) - left_behind) or (
        not at_write and time.time() >= start + delay
    ):
      process.send_signal(signal.SIGKILL)
      process.wait()
      return True, None
    time.sleep(0.005 if at_write else 0.05)
  if process.poll() is None:  # never reached a write: kill it anyway
    process.send_signal(signal.SIGKILL)
    process.wait()
    return True, None
  return False, process.returncode


def _outputs(workdir, config) -> dict:
  """{name: array} of every model's parameters and every sample array."""
  abstract = network_lib.abstract_params(
      network_lib.build_network(config, dropout=0.0), config
  )
  arrays = {}
  for steps in workdir_lib.saved_models(workdir):
    params, _ = workdir_lib.load_model(
        workdir, abstract, num_sample_steps=steps
    )
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
      arrays[f'models/{steps}/{jax.tree_util.keystr(path)}'] = np.asarray(leaf)
  for path in sorted(
      glob.glob(os.path.join(workdir_lib.samples_dir(workdir), '*.npz'))
  ):
    with np.load(path) as f:
      for key in f.files:
        arrays[f'samples/{os.path.basename(path)}/{key}'] = f[key]
  return arrays


def main(args):
  rng = random.Random(args.seed)
  config = test_config.get_config()
  for key, value in _OVERRIDES.items():
    section, field = key.split('.')
    config[section][field] = value
  with tempfile.TemporaryDirectory() as tmp:
    reference, chaotic = os.path.join(tmp, 'reference'), os.path.join(tmp, 'w')
    timing.progress('the uninterrupted run')
    seconds = _run_to_end(reference)
    kills, resumes, failures = [], 0, []
    resuming = False  # whether the next start continues a killed run
    while len(kills) < args.kills:
      at_write = len(kills) % 2 == 1
      delay = rng.uniform(0.5, seconds)
      killed, status = _kill_once(
          chaotic, at_write=at_write, delay=delay, deadline=2 * seconds
      )
      if resuming:
        resumes += 1
        if status not in (None, 0):
          failures.append(status)
      if killed:
        kills.append(
            'during a checkpoint write' if at_write else f'after {delay:.1f} s'
        )
        timing.progress(f'kill {len(kills)}/{args.kills}: {kills[-1]}')
      else:  # it finished first: start over, to have something to kill
        timing.progress('the run finished before the kill; starting over')
        subprocess.run(['rm', '-rf', chaotic], check=True)
      resuming = killed
    timing.progress('the last resume, to the end')
    _run_to_end(chaotic)
    resumes += 1
    expected, got = _outputs(reference, config), _outputs(chaotic, config)
  missing = sorted(set(expected) ^ set(got))
  max_difference = max(
      (
          float(np.max(np.abs(expected[k].astype(np.float64) - got[k])))
          for k in set(expected) & set(got)
      ),
      default=float('nan'),
  )
  report = {
      **timing.provenance(),
      'kills': len(kills),
      'kill_moments': kills,
      'resumes': resumes,
      'failed_resumes': failures,
      'arrays_compared': len(set(expected) & set(got)),
      'arrays_missing': missing,
      'max_difference': max_difference,
      'uninterrupted_seconds': seconds,
      'overrides': _OVERRIDES,
  }
  print(
      f'{len(kills)} kills, {resumes - len(failures)}/{resumes} resumes '
      f'succeeded, {report["arrays_compared"]} arrays compared, max '
      f'difference {max_difference}, missing {missing}'
  )
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(report, f, indent=2)
  return report


if __name__ == '__main__':
  command.run(_define_flags, main)
