"""The device mesh and how arrays are placed on it.

Data parallelism is one `jax.jit` over a one-axis mesh named 'data': batches
are split along their batch axis, the train state is replicated. Several
processes (hosts) share one mesh; each holds only its share of a batch.
"""

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = 'data'


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A one-axis 'data' mesh over all (or the given) devices.

  Auto axes: with the default Explicit ones, flax's Dropout on a
  batch-sharded input raises a ShardingTypeError.
  """
  devices = jax.devices() if devices is None else devices
  return jax.sharding.Mesh(
      np.asarray(devices),
      (DATA_AXIS,),
      axis_types=(jax.sharding.AxisType.Auto,),
  )


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh) -> NamedSharding:
  """[K, B, ...] training batches are split along B."""
  return NamedSharding(mesh, P(None, DATA_AXIS))


def sample_sharding(mesh) -> NamedSharding:
  """[B, ...] sampling batches are split along B."""
  return NamedSharding(mesh, P(DATA_AXIS))


def placed_shapes(tree, where):
  """The shapes and dtypes of `tree` placed by the sharding `where` (to
  restore or compile into)."""
  return jax.tree_util.tree_map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=where), tree
  )


def _identity(tree):
  return tree


def replicate(tree, mesh):
  """Host values that every process holds alike -> arrays replicated on the
  mesh (jax.device_put cannot place onto other processes' devices; a jitted
  identity can)."""
  return jax.jit(_identity, out_shardings=replicated(mesh))(tree)


def device_batch(images: np.ndarray, labels: np.ndarray, mesh) -> dict:
  """This process's share of a [K, B, ...] batch -> a global sharded array."""
  sharding = batch_sharding(mesh)
  return {
      'images': jax.make_array_from_process_local_data(sharding, images),
      'labels': jax.make_array_from_process_local_data(sharding, labels),
  }


def global_array(array: np.ndarray, sharding) -> jax.Array:
  """A host array that every process holds alike -> a global array (jit
  refuses NumPy inputs for shardings that span several processes)."""
  return jax.make_array_from_callback(
      array.shape, sharding, lambda index: array[index]
  )
