"""Peak memory of a training step against what its state must hold.

The peak is only meaningful in a process that has allocated nothing else,
so the throughput benchmark measures each (model, step) in a fresh process:
`in_fresh_process` reruns the benchmark's own command with
--memory_probe=MODEL:KIND, which runs `probe` alone and prints its JSON.
"""

import gc
import json
import os
import resource
import subprocess
import sys

import jax

from benchmarks import timing
from diffusion_distillation import network as network_lib
from diffusion_distillation.training import train_state as train_state_lib
from diffusion_distillation.utils import sharding


def _tree_bytes(tree) -> int:
  return sum(a.size * a.dtype.itemsize for a in jax.tree_util.tree_leaves(tree))


def state_bytes(spec: dict, kind: str) -> dict:
  """What the state of a `kind` step holds, from the abstract state."""
  config = spec['config']
  network = network_lib.build_network(config, dropout=0.0)
  state = train_state_lib.abstract_state(
      network, config, train_state_lib.make_optimizer(config, kind)
  )
  held = {
      'params': _tree_bytes(state.params),
      'opt_state': _tree_bytes(state.opt_state),
      'ema_params': _tree_bytes(state.ema_params),
  }
  if kind == 'distill':
    held['teacher_params'] = _tree_bytes(state.params)
  held['total'] = sum(held.values())
  return held


def probe(spec: dict, kind: str) -> dict:
  """The memory of one step `kind` of the model `spec`, measured in this
  process (which must be fresh: nothing else allocated).

  The runtime's own footprint (Python, XLA, the compiled executable) is
  measured after a first run with the model's buffers freed again; then the
  buffers are built anew and the peak is taken over two calls of the step.
  """
  mesh = sharding.make_mesh()
  step = timing.PreparedStep(
      spec['config'], kind, mesh, batch_size=spec['batch']
  )  # compiles or loads
  del step
  gc.collect()
  rss_runtime = timing.proc_status_bytes('VmRSS')
  step = timing.PreparedStep(
      spec['config'], kind, mesh, batch_size=spec['batch']
  )
  rss_with_state = timing.proc_status_bytes('VmRSS')
  with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')  # resets VmHWM, the peak RSS
  for _ in range(2):
    jax.block_until_ready(step.call())
  peak_step = timing.proc_status_bytes('VmHWM')
  report = {
      'rss_runtime_bytes': rss_runtime,
      'rss_with_state_bytes': rss_with_state,
      'peak_rss_step_bytes': peak_step,
      'peak_rss_above_runtime_bytes': peak_step - rss_runtime,
      # ru_maxrss is in KiB on Linux; it includes compilation.
      'peak_rss_process_bytes': (
          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
      ),
  }
  stats = jax.devices()[0].memory_stats()
  if stats and 'peak_bytes_in_use' in stats:
    report['device_peak_bytes'] = stats['peak_bytes_in_use']
  return report


def in_fresh_process(model: str, kind: str, cache_dir: str) -> dict:
  """`probe` of one model's step in a fresh process, which loads the
  executables this one compiled from `cache_dir`: the benchmark's own
  command line with --memory_probe=MODEL:KIND added (throughput.py)."""
  # glibc otherwise keeps freed large buffers on its heap once its adaptive
  # mmap threshold has grown, and RSS would not fall when buffers are freed.
  env = dict(
      os.environ,
      JAX_COMPILATION_CACHE_DIR=cache_dir,
      MALLOC_MMAP_THRESHOLD_='65536',
  )
  result = subprocess.run(
      [sys.executable, '-m', 'benchmarks.throughput']
      + sys.argv[1:]
      + [f'--memory_probe={model}:{kind}'],
      cwd=timing.REPO,
      env=env,
      capture_output=True,
      text=True,
      check=False,
  )
  if result.returncode:
    raise RuntimeError(
        f'memory probe {model}:{kind} failed:\n{result.stderr[-4000:]}'
    )
  return json.loads(result.stdout.strip().splitlines()[-1])
