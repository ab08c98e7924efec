"""One builder for a training phase: network, optimizer, compiled step, state.

Teacher training ('train'), every distillation round ('distill') and a
wing's phases (the guided wing's stage one, 'guide') run the same sequence:
build the network with the phase's dropout, the optimizer with its
learning-rate schedule, the step's static settings (and the phase's own),
the step compiled for the mesh, and a fresh (or restored) state placed as
the step returns it. The pipeline, the benchmarks and the tests all build
it here, so what they time and test is what a run executes.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import optax

from diffusion_distillation import network as network_lib
from diffusion_distillation import unet
from diffusion_distillation.training import phases
from diffusion_distillation.training import steps
from diffusion_distillation.training import train_state as train_state_lib
from diffusion_distillation.utils import sharding


@dataclasses.dataclass(frozen=True)
class Trainer:
  """A phase's network, optimizer and compiled step, for one mesh.

  `update(state, batch)` (teacher) or `update(state, batch, teacher_params)`
  (a phase with a teacher: distillation, guided stage one) runs
  `config[phase].substeps` optimizer steps on a [K, B, ...] batch and
  returns (state, metrics); the state is donated.
  """

  config: ml_collections.ConfigDict
  phase: phases.Phase
  mesh: jax.sharding.Mesh
  network: unet.UNet
  optimizer: optax.GradientTransformation
  compiled_step: callable
  rng: jax.Array

  def update(self, state, batch, teacher_params=None):
    if self.phase.has_teacher:
      return self.compiled_step(state, teacher_params, batch, self.rng)
    return self.compiled_step(state, batch, self.rng)

  def abstract_state(self) -> train_state_lib.TrainState:
    """The state's shapes, replicated over the mesh (to restore into)."""
    return sharding.placed_shapes(
        train_state_lib.abstract_state(
            self.network, self.config, self.optimizer
        ),
        sharding.replicated(self.mesh),
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
  backward convolutions of a step inside lax.scan fall back to naive loops,
  over 20x slower per digits update (docs/design.md); no XLA flag changes
  that. 'scan' elsewhere: one traced body compiles fast for any K.
  """
  return 'unrolled' if backend == 'cpu' else 'scan'


def build(
    config: ml_collections.ConfigDict,
    phase: str | phases.Phase,
    mesh: jax.sharding.Mesh,
    *,
    substep_loop: str | None = None,
    decay_steps: int | None = None,
) -> Trainer:
  """The Trainer of `phase` (a phases.Phase, or the name of one of
  phases.PHASES) on `mesh`.

  The network uses the phase's dropout and w-embedding setting; the
  learning rate decays to 0 over the phase's decay field (phases.py), if it
  has one; the step gets the phase's own settings (`step_options`) too.
  `substep_loop` ('scan' | 'unrolled') defaults to
  default_substep_loop(the mesh's platform); `decay_steps` replaces the
  decay field's value (a distillation round of its own length).
  """
  if isinstance(phase, str):
    phase = phases.get(phase)
  if substep_loop is None:
    substep_loop = default_substep_loop(mesh.devices.flat[0].platform)
  network = network_lib.build_network(
      config,
      dropout=phase.dropout(config),
      guidance_embedding=phase.guidance_embedding,
  )
  optimizer = train_state_lib.make_optimizer(
      config,
      phase.name,
      decay_steps=phase.decay_steps(config)
      if decay_steps is None
      else decay_steps,
  )
  settings = steps.step_settings(
      config,
      phase.name,
      network=network,
      optimizer=optimizer,
      substep_loop=substep_loop,
  )
  settings.update(phase.step_settings(config))
  replicated = sharding.replicated(mesh)
  batch = sharding.batch_sharding(mesh)
  in_shardings = (replicated, batch, replicated)
  if phase.has_teacher:
    in_shardings = (replicated,) + in_shardings
  compiled_step = jax.jit(
      functools.partial(phase.step, **settings),
      in_shardings=in_shardings,
      out_shardings=(replicated, replicated),
      donate_argnums=(0,),
  )
  rng = sharding.replicate(
      phases.stream_key(config.seed, phase.rng_stream), mesh
  )
  return Trainer(
      config=config,
      phase=phase,
      mesh=mesh,
      network=network,
      optimizer=optimizer,
      compiled_step=compiled_step,
      rng=rng,
  )
