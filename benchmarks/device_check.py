"""One command for a GPU or TPU: speed, memory and correctness of the steps.

On whatever backend JAX finds, for the paper's CIFAR-10 network
(configs/cifar10.py, 60.0 M parameters) at the paper's per-device batch
(128 over 8 chips = 16 per device, --per_device_batch):

- `train_step` and `distill_step` images/s in float32 and bfloat16
  (model.dtype), taken in turns; their FLOP/s (XLA's cost analysis) against
  a matmul of the same dtype timed in the same run (the model FLOP
  utilisation, MFU); compile time; XLA's memory plan and the device's peak
  memory;
- sampling images/s at 1, 4 and 1024 DDIM steps;
- correctness: the loss and gradient norm of one fixed batch from the same
  initial parameters on this backend (float32 and bfloat16) against the CPU
  in float32, as relative differences.

  python -m benchmarks.device_check            # at most ~8 minutes on a GPU
  python -m benchmarks.device_check --smoke    # tiny network, CPU, seconds

Writes benchmarks/results/device_check_<backend>.json (a temporary file with
--smoke) and prints a summary.
"""

import json
import os
import statistics
import tempfile

import jax
from absl import flags

from benchmarks import command
from benchmarks import timing
from configs import cifar10
from configs import test as test_config
from diffusion_distillation import network as network_lib
from diffusion_distillation import sampling
from diffusion_distillation.utils import sharding


def _define_flags():
  """The command's flags; defined only when it runs (benchmarks/command.py)."""
  flags.DEFINE_bool(
      'smoke', False, 'configs/test.py, tiny settings: checks that it runs'
  )
  flags.DEFINE_string(
      'out', None, 'the JSON to write (default: benchmarks/results/)'
  )
  flags.DEFINE_integer('per_device_batch', 16, 'train batch per device')
  flags.DEFINE_string('dtypes', 'float32,bfloat16', 'comma-separated')
  flags.DEFINE_integer('iters', 5, 'timed calls each')
  flags.DEFINE_string(
      'sample_steps', '1,4,1024', 'sampling step counts, comma-separated'
  )
  flags.DEFINE_integer(
      'sample_per_device_batch', 64, 'sampling batch per device'
  )
  flags.DEFINE_integer('matmul_size', 8192, 'side of the peak-speed matmul')
  flags.DEFINE_bool(
      'no_cpu_reference',
      False,
      'skip the CPU float32 run of the correctness check',
  )


_SMOKE = dict(
    per_device_batch=2,
    iters=2,
    sample_steps='1,4,8',
    sample_per_device_batch=2,
    matmul_size=256,
)


def _config(args, dtype: str):
  config = test_config.get_config() if args.smoke else cifar10.get_config()
  config.model.dtype = dtype
  if args.smoke:
    config.train.substeps = config.distill.substeps = 1
  return config


def _time_steps(args, dtype: str, mesh, batch_size: int) -> dict:
  config = _config(args, dtype)
  prepared = {
      phase: timing.PreparedStep(config, phase, mesh, batch_size=batch_size)
      for phase in ('train', 'distill')
  }
  times = timing.interleaved_seconds(
      [(phase, p.call) for phase, p in prepared.items()], args.iters
  )
  result = {}
  for phase, p in prepared.items():
    seconds = statistics.median(times[phase])
    result[f'{phase}_step'] = {
        'images_per_call': p.images_per_call,
        'seconds_median': seconds,
        'images_per_sec': p.images_per_call / seconds,
        'flops': p.flops,
        'flops_per_sec': p.flops / seconds,
        'compile_seconds': p.compile_seconds,
        'xla_memory_bytes': p.xla_memory_bytes,
        'first_metrics': p.first_metrics,
    }
  return result


def _time_sampling(args, dtype: str, mesh, batch_size: int) -> dict:
  config = _config(args, dtype)
  network = network_lib.build_network(config, dropout=0.0)
  params = jax.jit(
      lambda key: network_lib.init_params(network, config, key),
      out_shardings=sharding.replicated(mesh),
  )(jax.random.key(0))
  sampler = sampling.Sampler(network, config, mesh, batch_size=batch_size)
  labels = sampling.sample_labels_for(config, batch_size)
  result = {}
  for num_steps in [int(n) for n in args.sample_steps.split(',')]:
    run = lambda n=num_steps: sampler.sample(
        params, num_steps=n, num_samples=batch_size, labels=labels
    )
    run()  # compiles this step count
    seconds = statistics.median(
        timing.interleaved_seconds([('s', run)], max(1, args.iters // 2))['s']
    )
    result[str(num_steps)] = {
        'seconds': seconds,
        'images_per_sec': batch_size / seconds,
    }
  return result


def _first_update(args, dtype: str, devices) -> dict:
  """Loss and gradient norm of one teacher update (substeps=1) from the
  initial parameters on a fixed batch: the same inputs on every backend."""
  config = _config(args, dtype)
  config.train.substeps = 1
  mesh = sharding.make_mesh(devices)
  return timing.PreparedStep(
      config, 'train', mesh, batch_size=args.per_device_batch * len(devices)
  ).first_metrics


def _relative(a: float, b: float) -> float:
  return abs(a - b) / max(abs(b), 1e-30)


def _device_memory() -> dict:
  stats = jax.devices()[0].memory_stats() or {}
  return {
      k: stats[k]
      for k in ('bytes_in_use', 'peak_bytes_in_use', 'bytes_limit')
      if k in stats
  }


def main(args):
  if args.smoke:
    vars(args).update(_SMOKE)
  backend = jax.default_backend()
  out = args.out or (
      os.path.join(tempfile.mkdtemp(), 'device_check.json')
      if args.smoke
      else os.path.join(timing.RESULTS, f'device_check_{backend}.json')
  )
  mesh = sharding.make_mesh()
  num_devices = mesh.size
  batch = args.per_device_batch * num_devices
  dtypes = args.dtypes.split(',')
  report = {
      **timing.provenance(),
      'smoke': args.smoke,
      'network': 'configs/test.py' if args.smoke else 'configs/cifar10.py',
      'devices': num_devices,
      'global_batch': batch,
      'per_device_batch': args.per_device_batch,
      'dtypes': {},
  }
  for dtype in dtypes:
    timing.progress(f'{dtype}: the matmul peak')
    matmul = timing.matmul(args.matmul_size, dtype)
    peak_seconds = min(
        timing.interleaved_seconds([('m', matmul)], args.iters)['m']
    )
    peak = 2 * args.matmul_size**3 / peak_seconds
    timing.progress(f'{dtype}: train_step and distill_step')
    steps = _time_steps(args, dtype, mesh, batch)
    for step in steps.values():
      step['mfu'] = step['flops_per_sec'] / (peak * num_devices)
    steps['memory_after_steps'] = _device_memory()
    timing.progress(f'{dtype}: sampling')
    report['dtypes'][dtype] = {
        'matmul_flops_per_sec_per_device': peak,
        **steps,
        'sampling': _time_sampling(
            args, dtype, mesh, args.sample_per_device_batch * num_devices
        ),
    }
  if not args.no_cpu_reference:
    timing.progress('correctness: one update here and on the CPU')
    one_device = jax.devices()[:1]
    here = {dtype: _first_update(args, dtype, one_device) for dtype in dtypes}
    reference = _first_update(args, 'float32', jax.devices('cpu')[:1])
    report['correctness'] = {
        'cpu_float32': reference,
        'here': here,
        'relative_difference': {
            dtype: {
                key: _relative(metrics[key], reference[key])
                for key in ('loss', 'grad_norm')
            }
            for dtype, metrics in here.items()
        },
        'note': (
            'one teacher update (substeps=1, one device) from the same '
            'initial parameters, batch and random keys'
        ),
    }
  report['device_memory'] = _device_memory()
  print(_summary(report))
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, 'w') as f:
    json.dump(report, f, indent=2)
  print(f'wrote {out}')
  return report


def _summary(report: dict) -> str:
  lines = [
      f"{report['date']}  {report['machine']['backend']} "
      f"{report['machine']['devices'][0]} x{report['devices']}  batch "
      f"{report['global_batch']}  {report['network']}"
  ]
  for dtype, r in report['dtypes'].items():
    for phase in ('train_step', 'distill_step'):
      s = r[phase]
      lines.append(
          f"  {dtype:8s} {phase:12s} {s['images_per_sec']:9.1f} images/s  "
          f"MFU {s['mfu']:.0%}  compile {s['compile_seconds']:.0f} s  "
          f"temp {s['xla_memory_bytes']['temp'] / 2**20:.0f} MiB"
      )
    lines.append(
        f'  {dtype:8s} sampling '
        + ', '.join(
            f"{n} steps {v['images_per_sec']:.1f} images/s"
            for n, v in r['sampling'].items()
        )
    )
  for dtype, d in (
      report.get('correctness', {}).get('relative_difference', {}).items()
  ):
    lines.append(
        f'  vs CPU float32, {dtype}: loss {d["loss"]:.1e}, grad_norm '
        f'{d["grad_norm"]:.1e} (relative)'
    )
  return '\n'.join(lines)


if __name__ == '__main__':
  command.run(_define_flags, main)
