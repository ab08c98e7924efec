"""Data parallelism: the digits teacher step on one device against all.

Runs the pipeline's train step (trainer.build over a 'data' mesh) on one
host CPU device and on --devices of them, on the same global batches of the
real digits data, and prints (and saves) images/s and their ratio. Both are
measured in one run, so the ratio does not drift with the machine's load as
absolute rates do.

  python -m benchmarks.data_parallel [--devices=2] [--steps=20]
"""

import json
import os
import time

from absl import flags

from benchmarks import command


def _define_flags():
  """The command's flags; defined only when it runs (benchmarks/command.py)."""
  flags.DEFINE_integer('devices', 2, 'CPU devices to split the batch over')
  flags.DEFINE_integer('steps', 20, 'timed dispatches')
  flags.DEFINE_string(
      'out',
      os.path.join(
          os.path.dirname(os.path.abspath(__file__)),
          'results',
          'data_parallel.json',
      ),
      'the JSON to write',
  )


def main(args):
  # Fake CPU devices must be requested before JAX starts its backend, with
  # the collectives the command uses.
  from diffusion_distillation.utils import cli

  os.environ['XLA_FLAGS'] = cli.with_patient_collectives(
      os.environ.get('XLA_FLAGS', '')
      + f' --xla_force_host_platform_device_count={args.devices}'
  )
  import jax

  from benchmarks import timing
  from configs import digits
  from diffusion_distillation.data import datasets
  from diffusion_distillation.training import trainer as trainer_lib
  from diffusion_distillation.utils import sharding

  config = digits.get_config()
  dataset = datasets.load('digits')
  batch_size, substeps = config.train.batch_size, config.train.substeps

  def images_per_sec(devices):
    mesh = sharding.make_mesh(devices)
    trainer = trainer_lib.build(config, 'train', mesh)
    state = trainer.fresh_state(trainer.init_params(jax.random.key(0)), 0)

    def run_step(state, step):
      images, labels = datasets.batch_for_step(
          dataset, seed=0, step=step, batch_size=batch_size, substeps=substeps
      )
      return trainer.update(state, sharding.device_batch(images, labels, mesh))[
          0
      ]

    # Two untimed calls: the first compiles, and the second would show any
    # recompile caused by the output placement differing from the input's.
    state = run_step(run_step(state, 0), 0)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
      state = run_step(state, step)
    jax.block_until_ready(state)
    return args.steps * substeps * batch_size / (time.perf_counter() - start)

  n = args.devices
  results = {
      '1_device': images_per_sec(jax.devices()[:1]),
      f'{n}_devices': images_per_sec(jax.devices()[:n]),
  }
  report = {
      **timing.provenance(),
      'images_per_sec': results,
      'all_devices_over_1_device': (
          results[f'{n}_devices'] / results['1_device']
      ),
      'config': 'configs/digits.py',
      'batch_size': batch_size,
      'substeps': substeps,
      'timed_dispatches': args.steps,
      'backend': jax.default_backend(),
  }
  print(json.dumps(report, indent=2))
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(report, f, indent=2)


if __name__ == '__main__':
  command.run(_define_flags, main)
