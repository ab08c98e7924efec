"""One builder for a training phase: network, optimizer, compiled step, state.

Teacher training ('train'), every distillation round ('distill') and, for
guided configs, stage one of guided distillation ('guide') run the same
sequence: build the network with the phase's dropout, the optimizer
with its learning-rate schedule, the step's static settings, the step
compiled for the mesh, and a fresh (or restored) state placed as the step
returns it. The pipeline, the benchmarks and the tests all build it here, so
what they time and test is what a run executes.
"""

import dataclasses
import enum
import functools

import jax
import jax.numpy as jnp
import ml_collections
import optax

from diffusion_distillation import network as network_lib
from diffusion_distillation import sharding
from diffusion_distillation import steps
from diffusion_distillation import train_state as train_state_lib
from diffusion_distillation import unet

PHASES = ('train', 'distill', 'guide')


class RngStream(enum.IntEnum):
  """Independent random streams of a run, each folded into the config seed."""

  INIT = 0  # the teacher's initial parameters
  TRAIN = 1  # teacher training: times, noise and dropout of every step
  DISTILL = 2  # distillation rounds: times and noise of every step
  GUIDE = 3  # stage one of guided distillation (and its w-embedding init)


def stream_key(seed: int, stream: RngStream) -> jax.Array:
  return jax.random.fold_in(jax.random.key(seed), int(stream))


@dataclasses.dataclass(frozen=True)
class Trainer:
  """A phase's network, optimizer and compiled step, for one mesh.

  `update(state, batch)` (teacher) or `update(state, batch, teacher_params)`
  (distillation, and stage one of guided distillation) runs
  `config[phase].substeps` optimizer steps on a [K, B, ...] batch and
  returns (state, metrics); the state is donated.
  """

  config: ml_collections.ConfigDict
  phase: str
  mesh: jax.sharding.Mesh
  network: unet.UNet
  optimizer: optax.GradientTransformation
  compiled_step: callable
  rng: jax.Array

  teacher_network: unet.UNet | None = None  # 'guide': the guided teacher's

  def update(self, state, batch, teacher_params=None):
    if self.phase == 'train':
      return self.compiled_step(state, batch, self.rng)
    return self.compiled_step(state, teacher_params, batch, self.rng)

  def abstract_state(self) -> train_state_lib.TrainState:
    """The state's shapes, replicated over the mesh (to restore into)."""
    replicated = sharding.replicated(self.mesh)
    return jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
        train_state_lib.abstract_state(
            self.network, self.config, self.optimizer
        ),
    )

  def abstract_params(self):
    return self.abstract_state().params

  def init_params(self, rng: jax.Array):
    """Freshly initialised parameters, replicated over the mesh."""
    init = jax.jit(
        lambda key: network_lib.init_params(self.network, self.config, key),
        out_shardings=sharding.replicated(self.mesh),
    )
    return init(rng)

  def fresh_state(self, params, num_sample_steps: int):
    """A new state around `params`, whose buffers are its own (the step
    donates them), placed exactly as the step returns it: a scalar left on
    one device instead of replicated would make the second call compile
    again."""
    own = lambda tree: jax.tree_util.tree_map(
        lambda a: jnp.array(a, copy=True), tree
    )
    state = train_state_lib.create_state(
        own(params), self.optimizer, num_sample_steps=num_sample_steps
    )
    return sharding.replicate(state.replace(ema_params=own(params)), self.mesh)


def default_substep_loop(backend: str) -> str:
  """How the `substeps` optimizer steps of a dispatch are compiled.

  'unrolled' on CPU: XLA:CPU rewrites convolutions into the layout its fast
  kernels take only in a program's entry computation, not in loop bodies
  (its ConvCanonicalization pass visits entry_computation() alone), so the
  backward convolutions of a step inside lax.scan fall back to naive loops:
  8.3 s against 0.38 s per digits U-Net update, measured; no XLA flag
  changes that. 'scan' elsewhere: one traced body compiles fast for any K.
  """
  return 'unrolled' if backend == 'cpu' else 'scan'


def build(
    config: ml_collections.ConfigDict,
    phase: str,
    mesh: jax.sharding.Mesh,
    *,
    substep_loop: str | None = None,
) -> Trainer:
  """The Trainer of config[phase] ('train', 'distill' or 'guide') on `mesh`.

  The teacher trains with `model.dropout` at a constant learning rate after
  warmup; students use `distill.dropout` and a learning rate that decays
  linearly to 0 over each round of `distill.steps_per_round` steps. Stage
  one of guided distillation ('guide', guided configs only) trains the
  w-conditioned network with `guide.dropout` and a learning rate that
  decays to 0 over its `guide.num_steps`; its teacher network is the
  guided teacher's.
  `substep_loop` ('scan' | 'unrolled') defaults to
  default_substep_loop(the mesh's platform).
  """
  if phase not in PHASES:
    raise ValueError(f'Unknown phase {phase!r}; choose one of {PHASES}.')
  if substep_loop is None:
    substep_loop = default_substep_loop(mesh.devices.flat[0].platform)
  teacher_network = None
  if phase == 'train':
    dropout, decay_steps = config.model.dropout, 0
    stream, step_fn = RngStream.TRAIN, steps.train_step
  elif phase == 'distill':
    dropout = config.distill.dropout
    decay_steps = config.distill.steps_per_round
    stream, step_fn = RngStream.DISTILL, steps.distill_step
  else:
    if not network_lib.is_guided(config):
      raise ValueError("Phase 'guide' needs a guided config.")
    dropout, decay_steps = config.guide.dropout, config.guide.num_steps
    stream, step_fn = RngStream.GUIDE, steps.guide_step
    teacher_network = network_lib.build_network(
        config, dropout=0.0, guidance_embedding=False
    )
  # A guided config's teacher has no w-embedding; its students have one.
  network = network_lib.build_network(
      config,
      dropout=dropout,
      guidance_embedding=network_lib.is_guided(config) and phase != 'train',
  )
  optimizer = train_state_lib.make_optimizer(
      config, phase, decay_steps=decay_steps
  )
  settings = steps.step_settings(
      config,
      phase,
      network=network,
      optimizer=optimizer,
      substep_loop=substep_loop,
  )
  if teacher_network is not None:
    settings['teacher_network'] = teacher_network
  replicated = sharding.replicated(mesh)
  batch = sharding.batch_sharding(mesh)
  if phase == 'train':
    in_shardings = (replicated, batch, replicated)
  else:
    in_shardings = (replicated, replicated, batch, replicated)
  compiled_step = jax.jit(
      functools.partial(step_fn, **settings),
      in_shardings=in_shardings,
      out_shardings=(replicated, replicated),
      donate_argnums=(0,),
  )
  rng = sharding.replicate(stream_key(config.seed, stream), mesh)
  return Trainer(
      config=config,
      phase=phase,
      mesh=mesh,
      network=network,
      optimizer=optimizer,
      compiled_step=compiled_step,
      rng=rng,
      teacher_network=teacher_network,
  )
