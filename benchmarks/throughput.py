"""Throughput, FLOPs, sampler overhead and memory of the training steps.

For the digits config and the paper's CIFAR-10 network, measures in one run:
images/s of `train_step` and `distill_step` (compiled as the pipeline does)
and their cost ratio (ideal 5/3: two teacher forwards and one student
forward + backward, against one forward + backward); FLOPs per step from
XLA's cost analysis and the achieved FLOP/s as a fraction of a large matmul's
measured in the same run; the sampler's overhead (an N-step DDIM sample
against N network forwards at the same batch); the images/s speed-up of a
4-step student over the 1,024-step teacher; the peak memory of each step in a
fresh process against the bytes the state must hold. The calls whose ratio
is reported (train and distill step; forward and sample) are timed in turns,
so that a shared machine's changing load slows both alike; the matmul peak is
the best of runs before and after each model.

  python -m benchmarks.throughput [--smoke] [--out=PATH] [--iters=5] ...

Each step's memory is measured in a fresh process that this one starts:
the same command with --memory_probe=MODEL:KIND, which measures only that
(benchmarks/memory.py).

Writes benchmarks/results/throughput.json (a temporary file with --smoke).
"""

import importlib
import json
import os
import statistics
import tempfile

import jax
import jax.numpy as jnp
from absl import flags

from benchmarks import command
from benchmarks import memory as memory_lib
from benchmarks import timing
from diffusion_distillation import network as network_lib
from diffusion_distillation import sampling
from diffusion_distillation.utils import sharding


def _define_flags():
  """The command's flags; defined only when it runs (benchmarks/command.py)."""
  flags.DEFINE_bool(
      'smoke',
      False,
      'a tiny network (from configs/test.py), a couple of '
      'iterations: checks the script, measures nothing useful',
  )
  flags.DEFINE_string(
      'out',
      None,
      'JSON path (default: '
      'benchmarks/results/throughput.json, or a temporary '
      'directory with --smoke)',
  )
  flags.DEFINE_string(
      'models', 'digits,cifar10', 'comma-separated: digits, cifar10'
  )
  flags.DEFINE_integer('iters', 5, 'timed calls per step and per matmul run')
  flags.DEFINE_integer(
      'sample_iters',
      3,
      'timed calls per sampled step count, each after a timed forward',
  )
  flags.DEFINE_integer(
      'digits_batch', 128, 'train/distill batch of the digits network'
  )
  flags.DEFINE_integer('digits_sample_batch', 32, 'digits sampling batch')
  flags.DEFINE_integer(
      'digits_sample_steps',
      1024,
      'most DDIM steps sampled; below --teacher_steps the '
      "teacher's time is derived from the forward time",
  )
  flags.DEFINE_integer(
      'cifar_batch', 4, 'train/distill batch of the CIFAR-10 network'
  )
  flags.DEFINE_integer('cifar_sample_batch', 4, 'CIFAR-10 sampling batch')
  flags.DEFINE_integer(
      'cifar_sample_steps', 16, 'most CIFAR-10 sampling steps timed'
  )
  flags.DEFINE_integer(
      'teacher_steps', 1024, "the teacher's sampling steps in the speed-up"
  )
  flags.DEFINE_integer(
      'student_steps', 4, "the student's sampling steps in the speed-up"
  )
  flags.DEFINE_integer(
      'substeps',
      1,
      'optimizer steps per call (K of the [K, B, ...] '
      'batch); 1 keeps CPU compiles short',
  )
  flags.DEFINE_integer('matmul_size', 4096, 'side of the peak-speed matmul')
  flags.DEFINE_string(
      'matmul_dtypes',
      '',
      'comma-separated; default float32 on CPU (bfloat16 '
      'is slower than float32 there), float32,bfloat16 else',
  )
  flags.DEFINE_string(
      'memory_probe',
      '',
      'MODEL:KIND (e.g. digits:train): measure only the peak memory of that '
      'step, in this process, and print it as JSON; the benchmark runs '
      'itself so for each model and step, so that every peak is taken in a '
      'fresh process (benchmarks/memory.py)',
  )


# One tiny model as 'digits', its teacher time derived from 4 sampled steps.
_SMOKE = dict(
    models='digits',
    iters=2,
    sample_iters=1,
    digits_batch=2,
    digits_sample_batch=2,
    digits_sample_steps=4,
    matmul_size=512,
)
_IDEAL_DISTILL_OVER_TRAIN = 5 / 3
_TARGET_DISTILL_OVER_TRAIN = 1.8
_TARGET_SAMPLER_OVERHEAD = 1.1


def _model_specs(args) -> dict:
  """{name: dict(config, source, batch, sample_batch, max_sample_steps)}."""
  load = lambda name: importlib.import_module(f'configs.{name}').get_config()
  specs = {}
  for name in args.models.split(','):
    if name == 'digits':
      if args.smoke:
        # One level without attention halves the compile time of the steps.
        config = load('test')
        config.model.update(ch_mult=(1,), attn_resolutions=())
        source = 'configs/test.py with ch_mult (1,), no attention'
      else:
        config, source = load('digits'), 'configs/digits.py'
      specs[name] = dict(
          config=config,
          source=source,
          batch=args.digits_batch,
          sample_batch=args.digits_sample_batch,
          max_sample_steps=args.digits_sample_steps,
      )
    elif name == 'cifar10':
      config, source = load('cifar10'), 'configs/cifar10.py'
      specs[name] = dict(
          config=config,
          source=source,
          batch=args.cifar_batch,
          sample_batch=args.cifar_sample_batch,
          max_sample_steps=args.cifar_sample_steps,
      )
    else:
      raise ValueError(
          f'Unknown model {name!r} in --models; choose from digits, cifar10.'
      )
  for spec in specs.values():
    config = spec['config']
    for section in ('train', 'distill'):
      config[section].update(batch_size=spec['batch'], substeps=args.substeps)
    config.sample.batch_size = spec['sample_batch']
  return specs


def _measure_steps(spec: dict, mesh, args) -> dict:
  """Images/s and FLOPs of train_step and distill_step, timed in turns."""
  prepared = {
      kind: timing.PreparedStep(
          spec['config'], kind, mesh, batch_size=spec['batch']
      )
      for kind in ('train', 'distill')
  }
  times = timing.interleaved_seconds(
      [(kind, p.call) for kind, p in prepared.items()], args.iters
  )
  result = {}
  for kind, p in prepared.items():
    seconds, images = statistics.median(times[kind]), p.images_per_call
    result[f'{kind}_step'] = {
        'seconds_median': seconds,
        'seconds_all': times[kind],
        'images_per_call': images,
        'images_per_sec': images / seconds,
        'compile_seconds': p.compile_seconds,
        'flops': p.flops,
        'flops_per_image': p.flops / images,
        'flops_per_sec': p.flops / seconds,
        'xla_memory_bytes': p.xla_memory_bytes,
    }
  return result


def _measure_sampling(spec: dict, params, mesh, args) -> dict:
  """Forward time, DDIM sample times, overhead and the student's speed-up."""
  config, batch_size = spec['config'], spec['sample_batch']
  network = network_lib.build_network(config, dropout=0.0)  # as sampling
  shard = sharding.sample_sharding(mesh)
  forward = jax.jit(
      lambda p, z, logsnr, y: network.apply(
          {'params': p}, z, logsnr, y, train=False
      ),
      in_shardings=(sharding.replicated(mesh), shard, shard, shard),
      out_shardings=shard,
  )
  sampler = sampling.Sampler(network, config, mesh)
  labels = sampling.sample_labels_for(config, batch_size)
  z = sampler.noise(batch_size, seed=0)
  y = labels if labels is not None else jnp.zeros((batch_size,), jnp.int32)
  logsnr = jnp.zeros((batch_size,))
  compiled = forward.lower(params, z, logsnr, y).compile()
  run_forward = lambda: forward(params, z, logsnr, y)
  for _ in range(2):
    jax.block_until_ready(run_forward())
  calls = []
  for num_steps in sorted({args.student_steps, spec['max_sample_steps']}):
    run = lambda n=num_steps: sampler.sample(
        params, num_steps=n, num_samples=batch_size, labels=labels
    )
    run()  # compiles this step count
    calls += [('forward', run_forward), (num_steps, run)]
  times = timing.interleaved_seconds(calls, args.sample_iters)
  forward_seconds = statistics.median(times.pop('forward'))
  sample_seconds = {n: statistics.median(t) for n, t in times.items()}
  overhead = {n: s / (n * forward_seconds) for n, s in sample_seconds.items()}
  longest = max(sample_seconds)
  if args.teacher_steps in sample_seconds:
    teacher_seconds, source = sample_seconds[args.teacher_steps], 'measured'
  else:
    teacher_seconds = args.teacher_steps * forward_seconds * overhead[longest]
    source = (
        f'derived: {args.teacher_steps} x forward time x the overhead '
        f'measured at {longest} steps'
    )
  student_seconds = sample_seconds[args.student_steps]
  return {
      'forward': {
          'batch_size': batch_size,
          'seconds_median': forward_seconds,
          'flops': timing.flops(compiled),
      },
      'sampling': {
          'batch_size': batch_size,
          'seconds': {str(n): s for n, s in sample_seconds.items()},
          'images_per_sec': {
              str(n): batch_size / s for n, s in sample_seconds.items()
          },
          'overhead': {str(n): o for n, o in overhead.items()},
          'overhead_target_max': _TARGET_SAMPLER_OVERHEAD,
      },
      'student_speedup': {
          'student_steps': args.student_steps,
          'teacher_steps': args.teacher_steps,
          'student_seconds': student_seconds,
          'teacher_seconds': teacher_seconds,
          'teacher_source': source,
          'speedup': teacher_seconds / student_seconds,
          'ideal': args.teacher_steps / args.student_steps,
      },
  }


def _measure_model(name: str, spec: dict, mesh, args, cache_dir: str) -> dict:
  config = spec['config']
  network = network_lib.build_network(config, dropout=0.0)
  abstract = network_lib.abstract_params(network, config)
  result = {
      'config': spec['source'],
      'parameters': sum(a.size for a in jax.tree_util.tree_leaves(abstract)),
      'image_shape': (
          [config.dataset.image_size] * 2 + [config.dataset.channels]
      ),
      'batch_size': spec['batch'],
      'substeps': config.train.substeps,
  }
  timing.progress(f'{name}: timing train_step and distill_step in turns')
  result.update(_measure_steps(spec, mesh, args))
  train, distill = result['train_step'], result['distill_step']
  result['distill_over_train'] = {
      'time_per_image': (
          (distill['seconds_median'] / distill['images_per_call'])
          / (train['seconds_median'] / train['images_per_call'])
      ),
      'flops': distill['flops'] / train['flops'],
      'ideal': _IDEAL_DISTILL_OVER_TRAIN,
      'target_max': _TARGET_DISTILL_OVER_TRAIN,
  }
  timing.progress(f'{name}: timing the forward and the sampler in turns')
  params = jax.jit(
      lambda key: network_lib.init_params(network, config, key),
      out_shardings=sharding.replicated(mesh),
  )(jax.random.key(config.seed))
  result.update(_measure_sampling(spec, params, mesh, args))
  for kind in ('train', 'distill'):
    timing.progress(f'{name}: memory of {kind}_step (fresh process)')
    memory = memory_lib.in_fresh_process(name, kind, cache_dir)
    memory['state_bytes'] = memory_lib.state_bytes(spec, kind)
    held = memory.get(
        'device_peak_bytes', memory['peak_rss_above_runtime_bytes']
    )
    memory['peak_over_state'] = held / memory['state_bytes']['total']
    result[f'{kind}_step']['memory'] = memory
  return result


def _summary(report: dict) -> str:
  """A readable table of the figures."""
  mib = lambda b: f'{b / 2**20:.0f} MiB'
  peaks = ', '.join(
      f'{d} {f / 1e9:.0f} GFLOP/s'
      for d, f in report['matmul']['flops_per_sec'].items()
  )
  lines = [
      (
          f"{report['date']}  {report['machine']['backend']} "
          f"({report['machine']['cpu_count']} CPUs)  jax "
          f"{report['jax_version']}  commit {report['git_commit']}"
      ),
      f"matmul {report['matmul']['size']}^2 peak: {peaks}",
  ]
  for name, m in report['models'].items():
    ratio, speedup = m['distill_over_train'], m['student_speedup']
    lines.append(
        f"\n{name} ({m['config']}, {m['parameters']:,} parameters, "
        f"batch {m['batch_size']})"
    )
    for kind in ('train_step', 'distill_step'):
      s = m[kind]
      fractions = ', '.join(
          f'{f:.0%} of {d}' for d, f in s['fraction_of_matmul'].items()
      )
      mem = s['memory']
      peak = mem.get('device_peak_bytes', mem['peak_rss_above_runtime_bytes'])
      lines.append(
          f"  {kind:13s} {s['images_per_sec']:8.1f} images/s  "
          f"{s['seconds_median'] * 1e3:8.1f} ms  {s['flops'] / 1e9:8.2f} "
          f"GFLOP  {s['flops_per_sec'] / 1e9:6.1f} GFLOP/s ({fractions})  "
          f"peak {mib(peak)} vs state {mib(mem['state_bytes']['total'])}"
      )
    lines.append(
        f"  distill/train per image {ratio['time_per_image']:.2f} (FLOPs "
        f"{ratio['flops']:.2f}; ideal {ratio['ideal']:.2f}, target <= "
        f"{ratio['target_max']})"
    )
    samples = m['sampling']
    lines.append(
        f"  forward {m['forward']['seconds_median'] * 1e3:.2f} ms at batch "
        f"{samples['batch_size']}; sampler overhead "
        + ', '.join(
            f'{o:.2f} at {n} steps' for n, o in samples['overhead'].items()
        )
        + f" (target <= {samples['overhead_target_max']})"
    )
    lines.append(
        f"  {speedup['student_steps']}-step student vs "
        f"{speedup['teacher_steps']}-step teacher: {speedup['speedup']:.0f}x "
        f"images/s (ideal {speedup['ideal']:.0f}x; teacher "
        f"{speedup['teacher_source']})"
    )
  return '\n'.join(lines)


class _MatmulPeak:
  """The best FLOP/s of a large matmul per dtype, over runs before and
  after each model (a shared machine's load changes between them)."""

  def __init__(self, args):
    self.size, self._iters = args.matmul_size, args.iters
    self.dtypes = (
        args.matmul_dtypes.split(',')
        if args.matmul_dtypes
        else ['float32']
        if jax.default_backend() == 'cpu'
        else ['float32', 'bfloat16']
    )
    self._matmuls = [(d, timing.matmul(self.size, d)) for d in self.dtypes]
    self.runs = []

  def time(self):
    timing.progress('timing the matmul peak')
    times = timing.interleaved_seconds(self._matmuls, self._iters)
    self.runs.append(
        {d: 2 * self.size**3 / statistics.median(t) for d, t in times.items()}
    )

  def report(self) -> dict:
    peak = {d: max(run[d] for run in self.runs) for d in self.dtypes}
    return {
        'size': self.size,
        'flops_per_sec': peak,
        'runs': self.runs,
        'note': (
            'the best of the runs; float32 at the default matmul precision'
            + (
                ''
                if 'bfloat16' in peak
                else '; bfloat16 skipped: slower than float32 on CPU'
            )
        ),
    }


def _measure_models(args) -> tuple[dict, _MatmulPeak]:
  """({model name: its figures}, the matmul peak timed before and after
  each model)."""
  with tempfile.TemporaryDirectory() as own_cache:
    # The memory probes load the executables this process compiles.
    cache_dir = os.environ.get('JAX_COMPILATION_CACHE_DIR', own_cache)
    jax.config.update('jax_compilation_cache_dir', cache_dir)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
    matmul = _MatmulPeak(args)  # compiles: after the cache is set
    matmul.time()
    mesh = sharding.make_mesh()
    models = {}
    for name, spec in _model_specs(args).items():
      models[name] = _measure_model(name, spec, mesh, args, cache_dir)
      matmul.time()
  return models, matmul


def main(args):
  if args.smoke:
    vars(args).update(_SMOKE)
  if args.memory_probe:
    model, kind = args.memory_probe.split(':')
    print(json.dumps(memory_lib.probe(_model_specs(args)[model], kind)))
    return
  out = args.out or (
      os.path.join(tempfile.mkdtemp(), 'throughput.json')
      if args.smoke
      else os.path.join(timing.RESULTS, 'throughput.json')
  )
  models, matmul = _measure_models(args)
  matmul_report = matmul.report()
  for model in models.values():
    for kind in ('train_step', 'distill_step'):
      model[kind]['fraction_of_matmul'] = {
          d: model[kind]['flops_per_sec'] / p
          for d, p in matmul_report['flops_per_sec'].items()
      }
  report = {
      **timing.provenance(),
      'smoke': args.smoke,
      'settings': {
          k: v
          for k, v in vars(args).items()
          if k not in ('out', 'memory_probe')
      },
      'matmul': matmul_report,
      'models': models,
  }
  print(_summary(report))
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, 'w') as f:
    json.dump(report, f, indent=2)
  print(f'wrote {out}')


if __name__ == '__main__':
  command.run(_define_flags, main)
