"""jit over a device mesh against pmap, for the digits teacher step.

Runs the same train step three ways on host CPU devices and prints (and
saves) images/s: jit on 1 device, jit on a 2-device 'data' mesh, and pmap
over the same 2 devices with an explicit gradient pmean. Ratios are measured
in one run, so they do not drift with the machine's load as absolute times do.

  python benchmarks/data_parallel.py [--devices=2] [--steps=20]
"""

import argparse
import functools
import json
import os
import sys
import time

_ARGS = argparse.ArgumentParser(description=__doc__.splitlines()[0])
_ARGS.add_argument('--devices', type=int, default=2)
_ARGS.add_argument('--steps', type=int, default=20, help='timed dispatches')
_ARGS.add_argument('--config', default=os.path.join(
    os.path.dirname(__file__), '..', 'configs', 'digits.py'))
_ARGS.add_argument('--out', default=os.path.join(
    os.path.dirname(__file__), 'results', 'data_parallel.json'))


def main(args):
  # Fake CPU devices must be requested before jax is imported.
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             f' --xla_force_host_platform_device_count='
                             f'{args.devices}')
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from diffusion_distillation import config_checks, data, steps  # pylint: disable=g-import-not-at-top
  from diffusion_distillation import train_state as ts  # pylint: disable=g-import-not-at-top

  config = config_checks.base_config(args.config, 'digits')
  dataset = data.load('digits')
  network = ts.build_network(config, dropout=config.model.dropout)
  optimizer = ts.make_optimizer(config, 'train')
  settings = steps.step_settings(config, 'train', network=network,
                                 optimizer=optimizer)
  params = jax.jit(lambda r: ts.init_params(network, config, r))(
      jax.random.key(0))
  batch_size, substeps = config.train.batch_size, config.train.substeps

  def host_batch(step):
    return data.batch_for_step(dataset, seed=0, step=step,
                               batch_size=batch_size, substeps=substeps)

  def timed(run_step, state):
    # Two untimed calls: the first compiles, and the second would show any
    # recompile caused by the output placement differing from the input's.
    state = run_step(run_step(state, 0), 0)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
      state = run_step(state, step)
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start
    return args.steps * substeps * batch_size / seconds

  def fresh_state(sharding):
    own = lambda t: jax.tree_util.tree_map(lambda a: jnp.array(a, copy=True),
                                           t)
    state = ts.create_state(own(params), optimizer).replace(
        ema_params=own(params))
    return jax.device_put(state, sharding)

  results = {}
  for name, devices in (('jit_1_device', jax.devices()[:1]),
                        (f'jit_{args.devices}_devices', jax.devices())):
    mesh = steps.make_mesh(devices)
    step_fn = steps.compile_train_step(settings, mesh)
    rng = jax.device_put(jax.random.key(1), steps.replicated(mesh))
    run_step = lambda s, k, f=step_fn, m=mesh, r=rng: f(
        s, steps.device_batch(*host_batch(k), m), r)[0]
    results[name] = timed(run_step, fresh_state(steps.replicated(mesh)))

  n = args.devices
  pmapped = jax.pmap(
      functools.partial(steps.train_step, pmap_axis='data', **settings),
      axis_name='data', donate_argnums=(0,))
  keys = jax.random.split(jax.random.key(1), n)

  def pmap_step(state, step):
    images, labels = host_batch(step)
    per_device = lambda a: np.stack(np.split(a, n, axis=1))  # [n, K, B/n, ..]
    return pmapped(state, {'images': per_device(images),
                           'labels': per_device(labels)}, keys)[0]

  # Host copies, one per device: pmap places them itself.
  replicated_state = jax.tree_util.tree_map(
      lambda a: np.stack([np.asarray(a)] * n), fresh_state(jax.devices()[0]))
  results[f'pmap_{n}_devices'] = timed(pmap_step, replicated_state)

  report = {
      'images_per_sec': results,
      'jit_mesh_over_pmap': results[f'jit_{n}_devices'] /
                            results[f'pmap_{n}_devices'],
      'jit_mesh_over_1_device': results[f'jit_{n}_devices'] /
                                results['jit_1_device'],
      'config': os.path.basename(args.config), 'batch_size': batch_size,
      'substeps': substeps, 'timed_dispatches': args.steps,
      'backend': jax.default_backend(),
  }
  print(json.dumps(report, indent=2))
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(report, f, indent=2)


if __name__ == '__main__':
  main(_ARGS.parse_args(sys.argv[1:]))
