"""notebooks/demo.ipynb runs end to end (in its quick mode) and is stored
without outputs."""

import os

import nbclient
import nbformat
import pytest

from tests.helpers import HANG_SECS
from tests.helpers import REPO

pytestmark = pytest.mark.slow  # minutes on 2 CPU cores

NOTEBOOK = os.path.join(REPO, 'notebooks', 'demo.ipynb')


def test_notebook_is_stored_without_outputs():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(notebook)
  for cell in notebook.cells:
    if cell.cell_type == 'code':
      assert not cell.outputs and cell.execution_count is None


def test_notebook_runs_end_to_end(tmp_path, monkeypatch):
  # The kernel inherits these: fewer steps, a fresh workdir, and the test
  # suite's compilation cache.
  monkeypatch.setenv('DD_DEMO_QUICK', '1')
  monkeypatch.setenv('DD_DEMO_WORKDIR', str(tmp_path / 'demo'))
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbclient.NotebookClient(
      notebook,
      timeout=HANG_SECS,
      kernel_name='python3',
      resources={'metadata': {'path': os.path.dirname(NOTEBOOK)}},
  ).execute()

  outputs = [
      o
      for cell in notebook.cells
      if cell.cell_type == 'code'
      for o in cell.outputs
  ]
  text = ''.join(o.get('text', '') for o in outputs)
  assert f'Using {REPO}' in text
  # One grid per round: the 4-step teacher, then the 2- and 1-step students.
  grid_names = [line for line in text.splitlines() if line.startswith('grid_')]
  assert grid_names == ['grid_teacher_4.png', 'grid_2.png', 'grid_1.png']
  images = [o for o in outputs if 'image/png' in o.get('data', {})]
  # ... then the quality-vs-steps plot and the chosen-label samples.
  assert len(images) == len(grid_names) + 2
  assert '| steps | FD distilled | FD DDIM |' in text
  assert 'No internet connection: skipped the released checkpoint.' in text
