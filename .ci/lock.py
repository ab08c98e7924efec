"""constraints.txt: the exact package set, per Python version, that installs.

  python .ci/lock.py --check   # every Python version resolves the file
  python .ci/lock.py --write   # resolve anew and rewrite it

Both ask pip's resolver (`pip install --dry-run --python-version V
--only-binary=:all:`) what `.[test]` installs on Linux x86_64 for Python
3.10-3.13, so no interpreter of those versions is needed; only the version
this machine runs is also installed and tested. `promise`, which
tensorflow-datasets needs, is published as a source archive only (pure
Python), so its wheel is built locally first.

--write prefers the versions pinned for the running Python (the tested
set) and lets pip choose anew for a Python version where they do not
resolve; a package pinned alike for every version is written without a
marker.
"""

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONSTRAINTS = os.path.join(REPO, 'constraints.txt')
PYTHON_VERSIONS = ('3.10', '3.11', '3.12', '3.13')
_HEADER = """\
# The exact set the project is tested with, per Python version (Linux
# x86_64). Install with: pip install -e '.[test]' -c constraints.txt
# Written by .ci/lock.py --write; checked by .ci/lock.py --check.
"""


def _pip(*args, check=True):
  return subprocess.run(
      [sys.executable, '-m', 'pip', *args],
      capture_output=True,
      text=True,
      check=check,
  )


def _source_only_wheels(directory: str) -> str:
  """Builds wheels of the pure-Python packages published without one."""
  _pip('wheel', '--no-deps', '--quiet', '-w', directory, 'promise==2.3')
  return directory


def resolve(python_version: str, constraints: str, wheels: str) -> dict:
  """{name: version} that pip would install for `python_version`.

  Raises:
    RuntimeError with pip's error lines when it cannot resolve.
  """
  with tempfile.TemporaryDirectory() as tmp:
    report = os.path.join(tmp, 'report.json')
    result = _pip(
        'install',
        '--dry-run',
        '--ignore-installed',
        '--quiet',
        '--python-version',
        python_version,
        '--only-binary=:all:',
        '--find-links',
        wheels,
        '--target',
        os.path.join(tmp, 'target'),
        '--report',
        report,
        '-c',
        constraints,
        f'{REPO}[test]',
        check=False,
    )
    if result.returncode:
      errors = [
          line
          for line in result.stderr.splitlines()
          if line.startswith('ERROR')
      ]
      raise RuntimeError(
          f'Python {python_version}: '
          + ' '.join(errors or result.stderr.splitlines()[-3:])
      )
    with open(report) as f:
      installs = json.load(f)['install']
  return {
      item['metadata']['name']: item['metadata']['version']
      for item in installs
      if item['metadata']['name'] != 'diffusion_distillation'
  }


def _pins(packages: dict) -> str:
  return ''.join(
      f'{name}=={version}\n' for name, version in sorted(packages.items())
  )


def write(wheels: str):
  """Resolves every Python version, preferring the current pins."""
  current = f'{sys.version_info.major}.{sys.version_info.minor}'
  resolved = {}
  with tempfile.NamedTemporaryFile('w', suffix='.txt') as preferred:
    preferred.write(_read_for(current))
    preferred.flush()
    for version in PYTHON_VERSIONS:
      try:
        resolved[version] = resolve(version, preferred.name, wheels)
      except RuntimeError:  # a preferred version lacks a wheel there
        with tempfile.NamedTemporaryFile('w', suffix='.txt') as empty:
          resolved[version] = resolve(version, empty.name, wheels)
  by_name = collections.defaultdict(dict)
  for version, packages in resolved.items():
    for name, pinned in packages.items():
      by_name[name][version] = pinned
  lines = []
  for name in sorted(by_name, key=str.lower):
    versions = by_name[name]
    if (
        len(versions) == len(PYTHON_VERSIONS)
        and len(set(versions.values())) == 1
    ):
      lines.append(f'{name}=={versions[PYTHON_VERSIONS[0]]}')
      continue
    for version, pinned in versions.items():
      lines.append(f'{name}=={pinned}; python_version == "{version}"')
  with open(CONSTRAINTS, 'w') as f:
    f.write(_HEADER + '\n'.join(lines) + '\n')


def _read_for(python_version: str) -> str:
  """The pins of constraints.txt that apply to `python_version`."""
  pins = []
  with open(CONSTRAINTS) as f:
    for line in f:
      line = line.strip()
      if not line or line.startswith('#'):
        continue
      requirement, _, marker = line.partition(';')
      if marker and f'"{python_version}"' not in marker:
        continue
      pins.append(requirement.strip())
  return '\n'.join(pins) + '\n'


def check(wheels: str) -> bool:
  """Resolves constraints.txt for every Python version; prints each.

  pip evaluates a constraint's marker against the interpreter it runs on,
  not against --python-version, so each version gets the lines that its own
  interpreter would apply.
  """
  ok = True
  for version in PYTHON_VERSIONS:
    try:
      with tempfile.NamedTemporaryFile('w', suffix='.txt') as pins:
        pins.write(_read_for(version))
        pins.flush()
        packages = resolve(version, pins.name, wheels)
      print(
          f'Python {version}: resolves ({len(packages)} packages, jax '
          f'{packages.get("jax")})'
      )
    except RuntimeError as e:
      ok = False
      print(f'FAILED {e}')
  return ok


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  action = parser.add_mutually_exclusive_group(required=True)
  action.add_argument('--check', action='store_true')
  action.add_argument('--write', action='store_true')
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as wheels:
    _source_only_wheels(wheels)
    if args.write:
      write(wheels)
    sys.exit(0 if check(wheels) else 1)


if __name__ == '__main__':
  main()
