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

  python benchmarks/throughput.py [--smoke] [--out=PATH] [--iters=5] ...

Writes benchmarks/results/throughput.json (a temporary file with --smoke).
"""

import argparse
import datetime
import gc
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_distillation import config_checks
from diffusion_distillation import sampling
from diffusion_distillation import steps
from diffusion_distillation import train_state as ts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIGS = os.path.join(REPO, 'configs')

_ARGS = argparse.ArgumentParser(description=__doc__.splitlines()[0])
_ARGS.add_argument('--smoke', action='store_true',
                   help='a tiny network (from configs/test.py), a couple of '
                   'iterations: checks the script, measures nothing useful')
_ARGS.add_argument('--out', default=None, help='JSON path (default: '
                   'benchmarks/results/throughput.json, or a temporary '
                   'directory with --smoke)')
_ARGS.add_argument('--models', default='digits,cifar10',
                   help='comma-separated: digits, cifar10')
_ARGS.add_argument('--iters', type=int, default=5,
                   help='timed calls per step and per matmul run')
_ARGS.add_argument('--sample_iters', type=int, default=3,
                   help='timed calls per sampled step count, each '
                   'after a timed forward')
_ARGS.add_argument('--digits_batch', type=int, default=128,
                   help='train/distill batch of the digits network')
_ARGS.add_argument('--digits_sample_batch', type=int, default=32)
_ARGS.add_argument('--digits_sample_steps', type=int, default=1024,
                   help='most DDIM steps sampled; below --teacher_steps the '
                   "teacher's time is derived from the forward time")
_ARGS.add_argument('--cifar_batch', type=int, default=4,
                   help='train/distill batch of the CIFAR-10 network')
_ARGS.add_argument('--cifar_sample_batch', type=int, default=4)
_ARGS.add_argument('--cifar_sample_steps', type=int, default=16)
_ARGS.add_argument('--teacher_steps', type=int, default=1024)
_ARGS.add_argument('--student_steps', type=int, default=4)
_ARGS.add_argument('--substeps', type=int, default=1,
                   help='optimizer steps per call (K of the [K, B, ...] '
                   'batch); 1 keeps CPU compiles short')
_ARGS.add_argument('--matmul_size', type=int, default=4096)
_ARGS.add_argument('--matmul_dtypes', default='',
                   help='comma-separated; default float32 on CPU (bfloat16 '
                   'is slower than float32 there), float32,bfloat16 else')
_ARGS.add_argument('--memory_probe', default='', help=argparse.SUPPRESS)

# One tiny model as 'digits', its teacher time derived from 4 sampled steps.
_SMOKE = dict(models='digits', iters=2, sample_iters=1, digits_batch=2,
              digits_sample_batch=2, digits_sample_steps=4, matmul_size=512)
_IDEAL_DISTILL_OVER_TRAIN = 5 / 3
_TARGET_DISTILL_OVER_TRAIN = 1.8
_TARGET_SAMPLER_OVERHEAD = 1.1


_START = time.perf_counter()


def _progress(message: str):
  print(f'[{time.perf_counter() - _START:6.1f} s] {message}', flush=True)


def _cifar10_config(load):
  """(config, source): configs/cifar10.py where it exists, else the digits
  config with the paper's CIFAR-10 network (REFERENCE section 8)."""
  if os.path.exists(os.path.join(_CONFIGS, 'cifar10.py')):
    return load('cifar10'), 'configs/cifar10.py'
  config = load('digits')
  config.dataset.update(image_size=32, channels=3, class_conditional=False)
  config.model.update(ch=256, emb_ch=1024, ch_mult=(1, 1, 1),
                      num_res_blocks=3, attn_resolutions=(8, 16), num_heads=1,
                      head_dim=None, num_groups=32, dropout=0.2,
                      mean_type='x')
  config.distill.dropout = 0.0
  return config, 'configs/digits.py with the CIFAR-10 network of the paper'


def _model_specs(args) -> dict:
  """{name: dict(config, source, batch, sample_batch, max_sample_steps)}."""
  load = lambda name: config_checks.base_config(
      os.path.join(_CONFIGS, f'{name}.py'), name)
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
      specs[name] = dict(config=config, source=source,
                         batch=args.digits_batch,
                         sample_batch=args.digits_sample_batch,
                         max_sample_steps=args.digits_sample_steps)
    elif name == 'cifar10':
      config, source = _cifar10_config(load)
      specs[name] = dict(config=config, source=source, batch=args.cifar_batch,
                         sample_batch=args.cifar_sample_batch,
                         max_sample_steps=args.cifar_sample_steps)
    else:
      raise ValueError(f'Unknown model {name!r} in --models; choose from '
                       'digits, cifar10.')
  for spec in specs.values():
    config = spec['config']
    for section in ('train', 'distill'):
      config[section].update(batch_size=spec['batch'],
                             substeps=args.substeps)
    config.sample.batch_size = spec['sample_batch']
  return specs


def _init_fn(config, network, mesh):
  """A jitted key -> freshly initialised parameters, replicated."""
  return jax.jit(lambda r: ts.init_params(network, config, r),
                 out_shardings=steps.replicated(mesh))


def _build_step(spec: dict, kind: str, mesh):
  """The step of `kind` ('train' | 'distill'), compiled as the pipeline does.

  Returns (jitted step, make_args, images per call): make_args() builds
  fresh buffers (state, the arguments after the state), so that they can be
  freed and built again without tracing anything again.
  """

  config, batch_size = spec['config'], spec['batch']
  replicated = steps.replicated(mesh)
  dropout = config.model.dropout if kind == 'train' else config.distill.dropout
  network = ts.build_network(config, dropout=dropout)
  optimizer = ts.make_optimizer(
      config, kind,
      decay_steps=config.distill.steps_per_round if kind == 'distill' else 0)
  settings = steps.step_settings(config, kind, network=network,
                                 optimizer=optimizer)
  init = _init_fn(config, network, mesh)
  num_sample_steps = (config.distill.start_num_steps // 2
                      if kind == 'distill' else 0)
  substeps = config[kind].substeps
  size, channels = config.dataset.image_size, config.dataset.channels
  num_classes = (config.dataset.num_classes
                 if config.dataset.class_conditional else 1)

  def make_args():
    params = init(jax.random.key(config.seed))
    # As pipeline.Run.fresh_state: buffers of its own (the step donates
    # them), placed exactly as the step returns them.
    own = lambda tree: jax.tree_util.tree_map(
        lambda a: jnp.array(a, copy=True), tree)
    state = ts.create_state(own(params), optimizer,
                            num_sample_steps=num_sample_steps)
    state = jax.device_put(state.replace(ema_params=own(params)), replicated)
    # Timing does not depend on pixel values, so a synthetic batch stands in
    # for data (CIFAR-10 is not available offline).
    host_rng = np.random.default_rng(0)
    images = host_rng.uniform(-1, 1, (substeps, batch_size, size, size,
                                      channels)).astype(np.float32)
    labels = host_rng.integers(0, num_classes, (substeps, batch_size),
                               dtype=np.int32)
    batch = steps.device_batch(images, labels, mesh)
    rng = jax.device_put(jax.random.key(1), replicated)
    return state, ((batch, rng) if kind == 'train' else (params, batch, rng))

  compile_step = (steps.compile_train_step if kind == 'train' else
                  steps.compile_distill_step)
  return compile_step(settings, mesh), make_args, substeps * batch_size


def _tree_bytes(tree) -> int:
  return sum(a.size * a.dtype.itemsize for a in jax.tree_util.tree_leaves(tree))


def _state_bytes(spec: dict, kind: str) -> dict:
  """What the state of a `kind` step holds, from the abstract state."""
  config = spec['config']
  network = ts.build_network(config, dropout=0.0)
  state = ts.abstract_state(network, config, ts.make_optimizer(config, kind))
  held = {'params': _tree_bytes(state.params),
          'opt_state': _tree_bytes(state.opt_state),
          'ema_params': _tree_bytes(state.ema_params)}
  if kind == 'distill':
    held['teacher_params'] = _tree_bytes(state.params)
  held['total'] = sum(held.values())
  return held


def _proc_status_bytes(field: str) -> int:
  """VmRSS / VmHWM of this process in bytes (Linux)."""
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith(field + ':'):
        return int(line.split()[1]) * 1024
  raise RuntimeError(f'{field} not in /proc/self/status')


def _memory_probe(args):
  """Runs one step kind in this (fresh) process; prints its memory as JSON.

  The runtime's own footprint (Python, XLA, the compiled executable) is
  measured after a first run with the model's buffers freed again; then the
  buffers are built anew and the peak is taken over two calls of the step.
  """
  model, kind = args.memory_probe.split(':')
  step_fn, make_args, _ = _build_step(_model_specs(args)[model], kind,
                                      steps.make_mesh())
  state, rest = make_args()
  jax.block_until_ready(step_fn(state, *rest))  # compiles or loads
  del state, rest
  gc.collect()
  rss_runtime = _proc_status_bytes('VmRSS')
  state, rest = make_args()
  jax.block_until_ready((state, rest))
  rss_with_state = _proc_status_bytes('VmRSS')
  with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')  # resets VmHWM, the peak RSS
  for _ in range(2):
    state, metrics = step_fn(state, *rest)
    jax.block_until_ready((state, metrics))
  peak_step = _proc_status_bytes('VmHWM')
  report = {
      'rss_runtime_bytes': rss_runtime,
      'rss_with_state_bytes': rss_with_state,
      'peak_rss_step_bytes': peak_step,
      'peak_rss_above_runtime_bytes': peak_step - rss_runtime,
      # ru_maxrss is in KiB on Linux; it includes compilation.
      'peak_rss_process_bytes': resource.getrusage(
          resource.RUSAGE_SELF).ru_maxrss * 1024,
  }
  stats = jax.devices()[0].memory_stats()
  if stats and 'peak_bytes_in_use' in stats:
    report['device_peak_bytes'] = stats['peak_bytes_in_use']
  print(json.dumps(report))


def _run_memory_probe(model: str, kind: str, cache_dir: str) -> dict:
  """_memory_probe in a fresh process that loads this one's executables."""
  # glibc otherwise keeps freed large buffers on its heap once its adaptive
  # mmap threshold has grown, and RSS would not fall when buffers are freed.
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir,
             MALLOC_MMAP_THRESHOLD_='65536')
  result = subprocess.run(
      [sys.executable, os.path.abspath(__file__)] + sys.argv[1:] +
      [f'--memory_probe={model}:{kind}'],
      env=env, capture_output=True, text=True, check=False)
  if result.returncode:
    raise RuntimeError(f'memory probe {model}:{kind} failed:\n'
                       f'{result.stderr[-4000:]}')
  return json.loads(result.stdout.strip().splitlines()[-1])


def _flops(compiled) -> float:
  """FLOPs of a compiled executable from XLA's cost analysis."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per device
    cost = cost[0]
  return float(cost['flops'])


def _xla_memory(compiled) -> dict:
  stats = compiled.memory_analysis()
  return {name: int(getattr(stats, f'{name}_size_in_bytes'))
          for name in ('argument', 'output', 'alias', 'temp')}


def _interleaved_seconds(calls: list, rounds: int) -> dict:
  """{name: wall seconds of each call}, the calls taken in turns.

  calls: [(name, fn)], names may repeat. Taking turns makes a change in the
  machine's load (other work shares it) slow every call alike, so that the
  ratios between them hold.
  """
  times = {}
  for _ in range(rounds):
    for name, fn in calls:
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times.setdefault(name, []).append(time.perf_counter() - start)
  return times


def _matmul(size: int, dtype: str):
  """A compiled, warmed-up size x size matmul: () -> result."""
  a, b = (jax.random.normal(k, (size, size), dtype)
          for k in jax.random.split(jax.random.key(0)))
  matmul = jax.jit(jnp.matmul)
  for _ in range(2):
    jax.block_until_ready(matmul(a, b))
  return lambda: matmul(a, b)


def _prepare_step(spec: dict, kind: str, mesh) -> dict:
  """Compiles and warms up one step kind; its FLOPs and XLA memory plan."""
  step_fn, make_args, images = _build_step(spec, kind, mesh)
  state, rest = make_args()
  start = time.perf_counter()
  compiled = step_fn.lower(state, *rest).compile()  # shared with the calls
  compile_seconds = time.perf_counter() - start
  # Two untimed calls: a second compile (output placement differing from the
  # input's) would show here, not in the timings.
  for _ in range(2):
    state, _ = step_fn(state, *rest)
  jax.block_until_ready(state)
  holder = {'state': state}

  def call():
    holder['state'], metrics = step_fn(holder['state'], *rest)
    return holder['state'], metrics

  return {'call': call, 'images_per_call': images,
          'compile_seconds': compile_seconds, 'flops': _flops(compiled),
          'xla_memory_bytes': _xla_memory(compiled)}


def _measure_steps(spec: dict, mesh, args) -> dict:
  """Images/s and FLOPs of train_step and distill_step, timed in turns."""
  prepared = {kind: _prepare_step(spec, kind, mesh)
              for kind in ('train', 'distill')}
  times = _interleaved_seconds(
      [(kind, p['call']) for kind, p in prepared.items()], args.iters)
  result = {}
  for kind, p in prepared.items():
    seconds, images, flops = (statistics.median(times[kind]),
                              p['images_per_call'], p['flops'])
    result[f'{kind}_step'] = {
        'seconds_median': seconds, 'seconds_all': times[kind],
        'images_per_call': images, 'images_per_sec': images / seconds,
        'compile_seconds': p['compile_seconds'],
        'flops': flops, 'flops_per_image': flops / images,
        'flops_per_sec': flops / seconds,
        'xla_memory_bytes': p['xla_memory_bytes'],
    }
  return result


def _measure_sampling(spec: dict, params, mesh, args) -> dict:
  """Forward time, DDIM sample times, overhead and the student's speed-up."""
  config, batch_size = spec['config'], spec['sample_batch']
  network = ts.build_network(config, dropout=0.0)  # as the pipeline samples
  shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  forward = jax.jit(
      lambda p, z, logsnr, y: network.apply({'params': p}, z, logsnr, y,
                                            train=False),
      in_shardings=(steps.replicated(mesh), shard, shard, shard),
      out_shardings=shard)
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
        params, num_steps=n, num_samples=batch_size, labels=labels)
    run()  # compiles this step count
    calls += [('forward', run_forward), (num_steps, run)]
  times = _interleaved_seconds(calls, args.sample_iters)
  forward_seconds = statistics.median(times.pop('forward'))
  sample_seconds = {n: statistics.median(t) for n, t in times.items()}
  overhead = {n: s / (n * forward_seconds) for n, s in sample_seconds.items()}
  longest = max(sample_seconds)
  if args.teacher_steps in sample_seconds:
    teacher_seconds, source = sample_seconds[args.teacher_steps], 'measured'
  else:
    teacher_seconds = args.teacher_steps * forward_seconds * overhead[longest]
    source = (f'derived: {args.teacher_steps} x forward time x the overhead '
              f'measured at {longest} steps')
  student_seconds = sample_seconds[args.student_steps]
  return {
      'forward': {'batch_size': batch_size, 'seconds_median': forward_seconds,
                  'flops': _flops(compiled)},
      'sampling': {
          'batch_size': batch_size,
          'seconds': {str(n): s for n, s in sample_seconds.items()},
          'images_per_sec': {str(n): batch_size / s
                             for n, s in sample_seconds.items()},
          'overhead': {str(n): o for n, o in overhead.items()},
          'overhead_target_max': _TARGET_SAMPLER_OVERHEAD,
      },
      'student_speedup': {
          'student_steps': args.student_steps,
          'teacher_steps': args.teacher_steps,
          'student_seconds': student_seconds,
          'teacher_seconds': teacher_seconds, 'teacher_source': source,
          'speedup': teacher_seconds / student_seconds,
          'ideal': args.teacher_steps / args.student_steps,
      },
  }


def _measure_model(name: str, spec: dict, mesh, args, cache_dir: str) -> dict:
  config = spec['config']
  network = ts.build_network(config, dropout=0.0)
  abstract = ts.abstract_params(network, config)
  result = {
      'config': spec['source'],
      'parameters': sum(a.size for a in jax.tree_util.tree_leaves(abstract)),
      'image_shape': [config.dataset.image_size] * 2 + [
          config.dataset.channels],
      'batch_size': spec['batch'], 'substeps': config.train.substeps,
  }
  _progress(f'{name}: timing train_step and distill_step in turns')
  result.update(_measure_steps(spec, mesh, args))
  train, distill = result['train_step'], result['distill_step']
  result['distill_over_train'] = {
      'time_per_image': (distill['seconds_median'] / distill['images_per_call'])
                        / (train['seconds_median'] / train['images_per_call']),
      'flops': distill['flops'] / train['flops'],
      'ideal': _IDEAL_DISTILL_OVER_TRAIN,
      'target_max': _TARGET_DISTILL_OVER_TRAIN,
  }
  _progress(f'{name}: timing the forward and the sampler in turns')
  params = _init_fn(config, network, mesh)(jax.random.key(config.seed))
  result.update(_measure_sampling(spec, params, mesh, args))
  for kind in ('train', 'distill'):
    _progress(f'{name}: memory of {kind}_step (fresh process)')
    memory = _run_memory_probe(name, kind, cache_dir)
    memory['state_bytes'] = _state_bytes(spec, kind)
    held = memory.get('device_peak_bytes',
                      memory['peak_rss_above_runtime_bytes'])
    memory['peak_over_state'] = held / memory['state_bytes']['total']
    result[f'{kind}_step']['memory'] = memory
  return result


def _machine() -> dict:
  cpu = platform.processor()
  if os.path.exists('/proc/cpuinfo'):
    with open('/proc/cpuinfo') as f:
      names = [l.split(':', 1)[1].strip() for l in f
               if l.startswith('model name')]
    cpu = names[0] if names else cpu
  return {
      'platform': platform.platform(), 'python': platform.python_version(),
      'cpu': cpu, 'cpu_count': os.cpu_count(),
      'memory_bytes': os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES'),
      'backend': jax.default_backend(),
      'devices': [d.device_kind for d in jax.devices()],
  }


def _git(*command) -> str:
  result = subprocess.run(['git', '-C', REPO] + list(command),
                          capture_output=True, text=True, check=False)
  return result.stdout.strip() if result.returncode == 0 else ''


def _summary(report: dict) -> str:
  """A readable table of the figures."""
  mib = lambda b: f'{b / 2**20:.0f} MiB'
  peaks = ', '.join(f'{d} {f / 1e9:.0f} GFLOP/s'
                    for d, f in report['matmul']['flops_per_sec'].items())
  lines = [f"{report['date']}  {report['machine']['backend']} "
           f"({report['machine']['cpu_count']} CPUs)  jax "
           f"{report['jax_version']}  commit {report['git_commit']}",
           f"matmul {report['matmul']['size']}^2 peak: {peaks}"]
  for name, m in report['models'].items():
    ratio, speedup = m['distill_over_train'], m['student_speedup']
    lines.append(f"\n{name} ({m['config']}, {m['parameters']:,} parameters, "
                 f"batch {m['batch_size']})")
    for kind in ('train_step', 'distill_step'):
      s = m[kind]
      fractions = ', '.join(f'{f:.0%} of {d}'
                            for d, f in s['fraction_of_matmul'].items())
      mem = s['memory']
      peak = mem.get('device_peak_bytes', mem['peak_rss_above_runtime_bytes'])
      lines.append(
          f"  {kind:13s} {s['images_per_sec']:8.1f} images/s  "
          f"{s['seconds_median'] * 1e3:8.1f} ms  {s['flops'] / 1e9:8.2f} "
          f"GFLOP  {s['flops_per_sec'] / 1e9:6.1f} GFLOP/s ({fractions})  "
          f"peak {mib(peak)} vs state {mib(mem['state_bytes']['total'])}")
    lines.append(
        f"  distill/train per image {ratio['time_per_image']:.2f} (FLOPs "
        f"{ratio['flops']:.2f}; ideal {ratio['ideal']:.2f}, target <= "
        f"{ratio['target_max']})")
    samples = m['sampling']
    lines.append(
        f"  forward {m['forward']['seconds_median'] * 1e3:.2f} ms at batch "
        f"{samples['batch_size']}; sampler overhead " + ', '.join(
            f'{o:.2f} at {n} steps' for n, o in samples['overhead'].items()) +
        f" (target <= {samples['overhead_target_max']})")
    lines.append(
        f"  {speedup['student_steps']}-step student vs "
        f"{speedup['teacher_steps']}-step teacher: {speedup['speedup']:.0f}x "
        f"images/s (ideal {speedup['ideal']:.0f}x; teacher "
        f"{speedup['teacher_source']})")
  return '\n'.join(lines)


def main(args):
  if args.smoke:
    vars(args).update(_SMOKE)
  if args.memory_probe:
    _memory_probe(args)
    return
  out = args.out or (
      os.path.join(tempfile.mkdtemp(), 'throughput.json') if args.smoke else
      os.path.join(REPO, 'benchmarks', 'results', 'throughput.json'))
  with tempfile.TemporaryDirectory() as own_cache:
    # The memory probes load the executables this process compiles.
    cache_dir = os.environ.get('JAX_COMPILATION_CACHE_DIR', own_cache)
    jax.config.update('jax_compilation_cache_dir', cache_dir)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)

    backend = jax.default_backend()
    dtypes = (args.matmul_dtypes.split(',') if args.matmul_dtypes else
              ['float32'] if backend == 'cpu' else ['float32', 'bfloat16'])
    matmuls = [(d, _matmul(args.matmul_size, d)) for d in dtypes]
    matmul_runs = []  # before and after each model: the best is the peak

    def time_matmul():
      _progress('timing the matmul peak')
      times = _interleaved_seconds(matmuls, args.iters)
      matmul_runs.append({d: 2 * args.matmul_size**3 / statistics.median(t)
                          for d, t in times.items()})

    time_matmul()
    mesh = steps.make_mesh()
    models = {}
    for name, spec in _model_specs(args).items():
      models[name] = _measure_model(name, spec, mesh, args, cache_dir)
      time_matmul()

  peak = {d: max(run[d] for run in matmul_runs) for d in dtypes}
  for model in models.values():
    for kind in ('train_step', 'distill_step'):
      model[kind]['fraction_of_matmul'] = {
          d: model[kind]['flops_per_sec'] / p for d, p in peak.items()}
  report = {
      'date': datetime.datetime.now().astimezone().isoformat(
          timespec='seconds'),
      'machine': _machine(),
      'jax_version': jax.__version__,
      'jaxlib_version': importlib.metadata.version('jaxlib'),
      'git_commit': _git('rev-parse', '--short', 'HEAD'),
      'git_dirty': bool(_git('status', '--porcelain')),
      'smoke': args.smoke,
      'settings': {k: v for k, v in vars(args).items()
                   if k not in ('out', 'memory_probe')},
      'matmul': {'size': args.matmul_size, 'flops_per_sec': peak,
                 'runs': matmul_runs,
                 'note': 'the best of the runs; float32 at the default matmul '
                         'precision' + ('' if 'bfloat16' in peak else
                                        '; bfloat16 skipped: slower than '
                                        'float32 on CPU')},
      'models': models,
  }
  print(_summary(report))
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, 'w') as f:
    json.dump(report, f, indent=2)
  print(f'wrote {out}')


if __name__ == '__main__':
  main(_ARGS.parse_args(sys.argv[1:]))
