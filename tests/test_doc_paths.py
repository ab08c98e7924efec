"""Every file or module the docs and the docstrings name exists.

Read: README.md, docs/*.md and benchmarks/README.md whole; the docstrings
and comments of the package, the benchmarks, the configs and the tests. A
path with a folder (`evaluation/loop.py`) must exist from the repository,
the package, the naming file's folder or docs/, and so must a bare file
name in a docstring (in its own folder); a bare name in a
Markdown file somewhere in the repository; a dotted module
(`diffusion_distillation.guided.pipeline`) must import as far as its
packages go.
"""

import ast
import io
import pathlib
import re
import subprocess
import tokenize

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = REPO / 'diffusion_distillation'
DOCS = ('README.md', 'docs/*.md', 'benchmarks/README.md')
SOURCES = ('diffusion_distillation', 'benchmarks', 'configs', 'tests')

# Files of other repositories that the text names for comparison: the
# release's configs and the ADM evaluator.
ELSEWHERE = {
    'cifar_base.py',
    'cifar_distill.py',
    'imagenet64_base.py',
    'bedroom128_base.py',
    'bedroom128_distill.py',
    'church128_base.py',
    'church128_distill.py',
    'evaluations/evaluator.py',
    'evaluator.py',
}
# What a run writes into its workdir.
OUTPUTS = {'results.md', 'guided_results.md'}

_FILE = re.compile(
    r'(?<![\w/.<>{$*-])((?:[\w-]+/)*[\w-]+\.(?:py|md|sh|ipynb))(?![\w/])'
)
_MODULE = re.compile(
    r'(?<![\w.])((?:diffusion_distillation|benchmarks)(?:\.\w+)+)'
)
_ALL_NAMES = None


def _repo_file_names() -> set:
  global _ALL_NAMES
  if _ALL_NAMES is None:
    listed = subprocess.run(
        ['git', 'ls-files'], cwd=REPO, capture_output=True, text=True
    ).stdout.split()
    _ALL_NAMES = {pathlib.Path(name).name for name in listed}
  return _ALL_NAMES


def _file_exists(name: str, where: pathlib.Path) -> bool:
  """Whether `name`, named in the file `where`, exists."""
  stem = pathlib.Path(name).stem
  if name in ELSEWHERE | OUTPUTS or name.startswith('DIR/') or stem.isupper():
    return True  # elsewhere, a run's output, or a placeholder (CONFIG.py)
  if '/' not in name and where.suffix == '.md':
    return name in _repo_file_names()  # e.g. the rest of a list of one folder
  return any(
      (base / name).exists()
      for base in (REPO, PACKAGE, where.parent, REPO / 'docs')
  )


def _module_exists(dotted: str) -> bool:
  """Whether `dotted` names a module, or an attribute of one: each part
  inside a package must be a module or a subpackage of it."""
  path = REPO
  for part in dotted.split('.'):
    if not (path / '__init__.py').exists() and path != REPO:
      return True  # past a module: the rest are its attributes
    if (path / f'{part}.py').exists():
      path = path / f'{part}.py'
    elif (path / part / '__init__.py').exists():
      path = path / part
    else:
      return False
  return True


def _prose(path: pathlib.Path):
  """(line, text) of the prose a file holds: all of a Markdown file; the
  docstrings and comments of a Python file."""
  text = path.read_text()
  if path.suffix == '.md':
    yield 1, text
    return
  for node in ast.walk(ast.parse(text)):
    if isinstance(
        node,
        (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef),
    ):
      docstring = ast.get_docstring(node, clean=False)
      if docstring:
        yield getattr(node, 'lineno', 1), docstring
  for token in tokenize.generate_tokens(io.StringIO(text).readline):
    if token.type == tokenize.COMMENT:
      yield token.start[0], token.string


def _named_files():
  for pattern in DOCS:
    yield from sorted(REPO.glob(pattern))
  for folder in SOURCES:
    yield from sorted((REPO / folder).rglob('*.py'))


def _missing_names(path: pathlib.Path):
  """'file:line names X' for each X that `path` names and does not exist."""
  for line, text in _prose(path):
    found = [(m, _file_exists(m.group(1), path)) for m in _FILE.finditer(text)]
    found += [(m, _module_exists(m.group(1))) for m in _MODULE.finditer(text)]
    for match, exists in found:
      if not exists:
        at = line + text[: match.start()].count('\n')
        yield f'{path.relative_to(REPO)}:{at} names {match.group(1)}'


def test_every_named_file_and_module_exists():
  missing = [name for path in _named_files() for name in _missing_names(path)]
  assert not missing, 'no such file or module:\n' + '\n'.join(missing)


def test_the_check_finds_a_stale_name():
  loop = PACKAGE / 'evaluation' / 'loop.py'
  assert not _file_exists('eval_report.py', loop)
  assert not _file_exists('preemption.py', loop)  # utils/preemption.py
  assert _file_exists('scorers.py', loop)
  assert _file_exists('evaluation/loop.py', REPO / 'README.md')
  assert not _module_exists('diffusion_distillation.runs.preemption')
  assert _module_exists('diffusion_distillation.guided.pipeline.run_mode')
  assert _module_exists('benchmarks.chaos')
