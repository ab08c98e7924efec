"""Timing helpers shared by the benchmarks.

Steps are built by `trainer.build`, exactly as a run builds them, and fed
synthetic batches (timing does not depend on pixel values, and the paper's
datasets are not available offline). Calls whose ratio is reported are timed
in turns, so that a shared machine's changing load slows each alike.
"""

import datetime
import importlib.metadata
import os
import platform
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_distillation.training import trainer as trainer_lib
from diffusion_distillation.utils import sharding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, 'benchmarks', 'results')

_START = time.perf_counter()


def progress(message: str):
  print(f'[{time.perf_counter() - _START:6.1f} s] {message}', flush=True)


def interleaved_seconds(calls: list, rounds: int) -> dict:
  """{name: [wall seconds of each call]}, the calls taken in turns.

  calls: [(name, fn)]; names may repeat, and fn() returns arrays to wait on.
  """
  times = {}
  for _ in range(rounds):
    for name, fn in calls:
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times.setdefault(name, []).append(time.perf_counter() - start)
  return times


def matmul(size: int, dtype: str):
  """A compiled, warmed-up size x size matmul: () -> result.

  Its FLOP rate, 2 size^3 / seconds, is the practical peak that the steps'
  rates are compared with (their share of it: the model FLOP utilisation).
  """
  a, b = (
      jax.random.normal(k, (size, size), dtype)
      for k in jax.random.split(jax.random.key(0))
  )
  compiled = jax.jit(jnp.matmul)
  for _ in range(2):
    jax.block_until_ready(compiled(a, b))
  return lambda: compiled(a, b)


def flops(compiled) -> float:
  """FLOPs of a compiled executable, from XLA's cost analysis."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per device
    cost = cost[0]
  return float(cost['flops'])


def xla_memory(compiled) -> dict:
  """The compiled executable's memory plan, in bytes."""
  stats = compiled.memory_analysis()
  return {
      name: int(getattr(stats, f'{name}_size_in_bytes'))
      for name in ('argument', 'output', 'alias', 'temp')
  }


def synthetic_batch(config, phase: str, mesh, batch_size: int) -> dict:
  """A [substeps, batch_size, H, W, C] batch of uniform noise, on the mesh."""
  substeps = config[phase].substeps
  size, channels = config.dataset.image_size, config.dataset.channels
  num_classes = (
      config.dataset.num_classes if config.dataset.class_conditional else 1
  )
  host_rng = np.random.default_rng(0)
  images = host_rng.uniform(
      -1, 1, (substeps, batch_size, size, size, channels)
  ).astype(np.float32)
  labels = host_rng.integers(
      0, num_classes, (substeps, batch_size), dtype=np.int32
  )
  return sharding.device_batch(images, labels, mesh)


class PreparedStep:
  """A phase's step built by trainer.build, compiled and warmed up.

  `call()` runs one dispatch (substeps optimizer steps) on a fixed synthetic
  batch, carrying the state from call to call as a run does.
  `first_metrics` holds the loss and gradient norm of the first call, from
  the freshly initialised parameters (the same on every backend).
  """

  def __init__(self, config, phase: str, mesh, *, batch_size: int):
    self.trainer = trainer_lib.build(config, phase, mesh)
    self.images_per_call = config[phase].substeps * batch_size
    self.teacher = self.trainer.init_params(jax.random.key(config.seed))
    num_sample_steps = (
        config.distill.start_num_steps // 2 if phase == 'distill' else 0
    )
    state = self.trainer.fresh_state(self.teacher, num_sample_steps)
    self.batch = synthetic_batch(config, phase, mesh, batch_size)
    self._args = (
        (self.batch,) if phase == 'train' else (self.teacher, self.batch)
    )
    start = time.perf_counter()
    self.compiled = self.trainer.compiled_step.lower(
        state, *self._args, self.trainer.rng
    ).compile()
    self.compile_seconds = time.perf_counter() - start
    self.flops = flops(self.compiled)
    self.xla_memory_bytes = xla_memory(self.compiled)
    self._state = state
    # Two untimed calls: the first's metrics are the backend-independent
    # ones; a recompile would show here, not in the timings.
    _, metrics = self.call()
    self.first_metrics = {
        k: float(v) for k, v in jax.device_get(metrics).items()
    }
    jax.block_until_ready(self.call())

  def call(self):
    self._state, metrics = self.compiled(
        self._state, *self._args, self.trainer.rng
    )
    return self._state, metrics


def machine() -> dict:
  cpu = platform.processor()
  if os.path.exists('/proc/cpuinfo'):
    with open('/proc/cpuinfo') as f:
      names = [
          line.split(':', 1)[1].strip()
          for line in f
          if line.startswith('model name')
      ]
    cpu = names[0] if names else cpu
  return {
      'platform': platform.platform(),
      'python': platform.python_version(),
      'cpu': cpu,
      'cpu_count': os.cpu_count(),
      'memory_bytes': os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES'),
      'backend': jax.default_backend(),
      'devices': [d.device_kind for d in jax.devices()],
  }


def git(*command) -> str:
  result = subprocess.run(
      ['git', '-C', REPO] + list(command),
      capture_output=True,
      text=True,
      check=False,
  )
  return result.stdout.strip() if result.returncode == 0 else ''


def provenance() -> dict:
  """When, where and with what code a benchmark ran."""
  return {
      'date': (
          datetime.datetime.now().astimezone().isoformat(timespec='seconds')
      ),
      'machine': machine(),
      'jax_version': jax.__version__,
      'jaxlib_version': importlib.metadata.version('jaxlib'),
      'git_commit': git('rev-parse', '--short', 'HEAD'),
      'git_dirty': bool(git('status', '--porcelain')),
  }


def provenance_line(report: dict) -> str:
  """The date, commit and machine of a report with provenance(), in one
  line for the head of its Markdown."""
  machine_ = report['machine']
  return (
      f"{report['date']}, commit {report['git_commit']}, {machine_['cpu']} "
      f"({machine_['cpu_count']} cores, {machine_['backend']}), jax "
      f"{report['jax_version']}"
  )


def proc_status_bytes(field: str) -> int:
  """VmRSS / VmHWM of this process in bytes (Linux)."""
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith(field + ':'):
        return int(line.split()[1]) * 1024
  raise RuntimeError(f'{field} not in /proc/self/status')


def run_phases(run, phases) -> tuple:
  """Runs each (name, phase) of a pipeline.Run in order, printing its wall
  time; returns (the last phase's result, {name: seconds})."""
  wall, result = {}, None
  for name, phase in phases:
    start = time.time()
    result = phase(run)
    wall[name] = time.time() - start
    print(f'{name}: {wall[name]:.1f} s', flush=True)
  return result, wall
