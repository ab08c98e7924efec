"""The package's folders are its layers: imports point down them, and every
module is imported under its own name. Read from the source with `ast`, so
a lazy import inside a function counts as much as one at the top."""

import ast
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = 'diffusion_distillation'

# Bottom to top. A layer is a subpackage or a group of top-level modules;
# each imports only from itself and the layers below it, so no two import
# each other. docs/design.md's map lists the same layers in this order.
LAYERS = (
    ('utils',),
    ('schedules', 'diffusion', 'unet', 'network'),
    ('data',),
    ('sampling',),
    ('training',),
    ('runs',),
    ('evaluation',),
    ('pipeline',),
    ('guided',),
    ('main', 'release_import'),
)
_LAYER_OF = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}

# Short names that every JAX codebase uses for these libraries.
_CONVENTIONAL = {
    'jax.numpy': 'jnp',
    'numpy': 'np',
    'flax.linen': 'nn',
    'orbax.checkpoint': 'ocp',
    'tensorflow': 'tf',
    'tensorflow_datasets': 'tfds',
    'jax.sharding.PartitionSpec': 'P',
}


def _python_files(*folders):
  for folder in folders:
    yield from sorted((REPO / folder).rglob('*.py'))


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(REPO).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _imports(path: pathlib.Path):
  """(imported module, alias or None, line) of every import in `path`; a
  `from a import b` counts as importing a.b."""
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield alias.name, alias.asname, node.lineno
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      for alias in node.names:
        yield f'{node.module}.{alias.name}', alias.asname, node.lineno


def _unit(module: str) -> str | None:
  """The layer unit of a package module: its subpackage or its own name."""
  parts = module.split('.')
  if parts[0] != PACKAGE or len(parts) < 2:
    return None
  return parts[1]


def test_every_package_module_has_a_layer():
  for path in _python_files(PACKAGE):
    unit = _unit(_module_name(path))
    assert (
        unit is None or unit in _LAYER_OF
    ), f'{path.relative_to(REPO)} is in no layer of tests/test_layers.py'


def test_imports_point_down_the_layers():
  upward = []
  for path in _python_files(PACKAGE):
    here = _unit(_module_name(path))
    for imported, _, line in _imports(path):
      top = imported.split('.')[0]
      assert top not in (
          'benchmarks',
          'tests',
          'configs',
      ), f'{path.relative_to(REPO)}:{line} imports {imported}'
      there = _unit(imported)
      if here is None or there is None:
        continue
      if _LAYER_OF[there] > _LAYER_OF[here]:
        upward.append(f'{path.relative_to(REPO)}:{line} imports {imported}')
  assert not upward, 'imports up or across the layers:\n' + '\n'.join(upward)


def test_design_map_lists_the_layers_in_order():
  design = (REPO / 'docs' / 'design.md').read_text()
  rows = re.findall(r'^\| (.+?) \| .+ \|$', design.split('| layer |')[1], re.M)
  listed = []
  for row in rows:
    if set(row) <= {'-', '|'}:
      continue
    names = re.findall(r'`([\w/]+?)/?`', row)
    if not names:
      break
    listed.append(tuple(names))
  assert tuple(listed) == LAYERS


@pytest.mark.parametrize('folder', [PACKAGE, 'benchmarks', 'tests'])
def test_modules_are_imported_under_their_own_names(folder):
  """A module is `name`; `name_lib` where `name` is taken (a variable, a
  parameter); `folder_name` where two modules of one name meet, or the
  name alone would not say what it is (`evaluation_loop`, `test_config`
  for configs/test.py)."""
  renamed = []
  for path in _python_files(folder):
    for imported, alias, line in _imports(path):
      if alias is None:
        continue
      *parents, name = imported.split('.')
      own = {name, f'{name}_lib'} | {f'{p}_{name}' for p in parents[-1:]}
      if parents == ['configs']:
        own.add(f'{name}_config')
      if alias not in own and _CONVENTIONAL.get(imported) != alias:
        renamed.append(f'{path.relative_to(REPO)}:{line} {imported} as {alias}')
  assert not renamed, 'modules under other names:\n' + '\n'.join(renamed)
