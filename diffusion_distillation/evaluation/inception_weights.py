"""InceptionV3 weight files: read, checked, written and fingerprinted.

Weights are a file the user supplies, local or gs://; nothing is downloaded.
Their layout is fidjax's (and jax-fid's), with torchvision's module names:

  {'Conv2d_1a_3x3': {'conv': {'kernel': [kh, kw, in, out]},
                     'bn': {'scale', 'bias', 'mean', 'var': [out]}},
   ..., 'Mixed_5b': {'branch1x1': {'conv': ..., 'bn': ...}, ...}, ...,
   'fc': {'kernel': [2048, 1008]}}

either pickled as that nested dict (fidjax's
`inception_v3_weights_fid.pickle` reads as it is) or as an .npz whose keys
are the '/'-joined paths (`Mixed_5b/branch1x1/conv/kernel`), which
inception_graph.py writes from the ADM evaluator's own graph file.
"""

import hashlib
import io
import pickle
import zipfile

import numpy as np

from diffusion_distillation.evaluation import inception_net
from diffusion_distillation.utils import errors
from diffusion_distillation.utils import files

WEIGHTS_HELP = (
    "convert the ADM evaluator's classify_image_graph_def.pb with "
    '`python -m diffusion_distillation.evaluation.inception --graph_def=PB '
    "--out=inception_fid.npz`, or use fidjax's "
    'inception_v3_weights_fid.pickle (docs/reproducing.md)'
)


def _flatten(tree: dict, prefix: str = '') -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}/'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def unflatten(flat) -> dict:
  """{'a/b/c': array} -> {'a': {'b': {'c': array}}}."""
  tree = {}
  for name, value in flat.items():
    *scopes, leaf = name.split('/')
    node = tree
    for scope in scopes:
      node = node.setdefault(scope, {})
    node[leaf] = value
  return tree


def save_params(params: dict, path: str):
  """Writes weights in the library's layout as .npz ('/'-joined keys)."""
  buffer = io.BytesIO()
  np.savez(buffer, **{k: np.asarray(v) for k, v in _flatten(params).items()})
  files.write_atomically(path, buffer.getvalue())


def load_params(path: str) -> dict:
  """Reads weights (.npz, or fidjax's pickle) and checks every array's
  name and shape; returns a nested dict of float32 NumPy arrays.

  Raises:
    errors.InputError naming the file and the first missing or misshapen
    array.
  """
  source = files.as_path(path)
  if not source.exists():
    raise errors.InputError(
        f'Inception weights {path} do not exist; {WEIGHTS_HELP}.'
    )
  raw = source.read_bytes()
  try:
    if zipfile.is_zipfile(io.BytesIO(raw)):
      with np.load(io.BytesIO(raw)) as npz:
        loaded = {k: npz[k] for k in npz.files}
    else:
      # A pickle runs code when read: read only weight files you trust.
      loaded = _flatten(pickle.loads(raw))
  except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
    raise errors.InputError(
        f'Cannot read Inception weights {path} as .npz or pickle '
        f'({type(e).__name__}: {e}); {WEIGHTS_HELP}.'
    ) from None
  params = {}
  for name, expected in _flatten(inception_net.abstract_params()).items():
    if name not in loaded:
      raise errors.InputError(
          f'Inception weights {path} lack {name!r}; {WEIGHTS_HELP}.'
      )
    array = np.asarray(loaded[name], np.float32)
    if array.shape != expected.shape:
      raise errors.InputError(
          f'Inception weights {path}: {name!r} has shape {array.shape}, '
          f'expected {expected.shape}; {WEIGHTS_HELP}.'
      )
    params[name] = array
  return unflatten(params)


def fingerprint(params: dict) -> str:
  """A short hash of the weights: names a cache computed with them."""
  digest = hashlib.sha256()
  for name, array in sorted(_flatten(params).items()):
    digest.update(name.encode())
    digest.update(np.ascontiguousarray(array, np.float32).tobytes())
  return digest.hexdigest()[:12]
