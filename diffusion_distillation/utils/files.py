"""Paths and whole-file writes, local or on a URL such as gs://bucket/dir.

Everything the project writes besides orbax checkpoints (config.json,
sample .npz and .png files, eval results) goes through `write_atomically`,
so that a crash never leaves a truncated file behind.
"""

import json
import math
import os

from etils import epath

from diffusion_distillation.utils import preemption


def as_path(path) -> epath.Path:
  """A local path made absolute, or a URL such as gs://bucket/dir as it is
  (epath reads and writes both, as orbax does)."""
  return epath.Path(path if '://' in str(path) else os.path.abspath(path))


def write_atomically(path, data):
  """Writes str or bytes `data` to `path` whole or not at all: a temporary
  file renamed into place."""
  path = as_path(path)
  tmp = path.parent / f'{path.name}.tmp'
  with preemption.shielded():  # no stray .tmp left by SIGTERM or SIGINT
    if isinstance(data, str):
      tmp.write_text(data)
    else:
      tmp.write_bytes(data)
    tmp.replace(path)  # rename() refuses an existing file; a rerun overwrites


def _json_safe(value):
  # PSNR of identical samples is +inf, which strict JSON cannot hold.
  if isinstance(value, float) and math.isinf(value):
    return 'inf' if value > 0 else '-inf'
  if isinstance(value, dict):
    return {k: _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  return value


def write_json(value, path):
  """Writes `value` as indented JSON, atomically (+inf becomes "inf")."""
  write_atomically(
      path, json.dumps(_json_safe(value), indent=2, sort_keys=True)
  )
