"""data/prepare.py: Debian's Fashion-MNIST files restored to upstream's bytes,
tfds's own preparation with its checksums, offline; and the missing
dependency that stopped tfds from preparing anything.

The tests on the real files skip unless Debian's package is installed
(`apt-get install dataset-fashion-mnist`; CI installs it)."""

import gzip
import hashlib
import importlib.metadata
import os
import re
import shutil
import struct

import numpy as np
import pytest
import tensorflow_datasets as tfds

from diffusion_distillation.data import input_pipeline
from diffusion_distillation.data import prepare
from diffusion_distillation.utils import errors
from tests.helpers import needs_debian_fashion_mnist


def _debian_style_gzip(path, content: bytes, mtime=1591315181):
  """A gzip file as Debian's packaging writes it: flags 0, no file name."""
  compressed = gzip.compress(content, mtime=mtime)
  assert compressed[3] == 0  # Python writes no FNAME without a filename
  path.write_bytes(compressed)
  return compressed


def test_restored_header_is_upstreams_and_the_data_unchanged(tmp_path):
  content = bytes(range(256)) * 40
  name = 'train-labels-idx1-ubyte.gz'
  debian = _debian_style_gzip(tmp_path / name, content)
  prepare.restore_upstream_gzip(str(tmp_path / name), str(tmp_path / 'out'))
  restored = (tmp_path / 'out').read_bytes()
  assert restored[:10] == (
      b'\x1f\x8b\x08\x08' + struct.pack('<I', 1504176606) + b'\x00\x03'
  )
  assert restored[10:].startswith(b'train-labels-idx1-ubyte\x00')
  assert restored.endswith(
      debian[10:]
  )  # deflate data, CRC and size as they were
  assert len(restored) == len(debian) + len(b'train-labels-idx1-ubyte\x00')
  assert gzip.decompress(restored) == content


def test_a_file_that_is_not_debians_gzip_is_refused(tmp_path):
  (tmp_path / 't10k-images-idx3-ubyte.gz').write_bytes(b'not a gzip file')
  with pytest.raises(errors.InputError, match='is not a gzip file'):
    prepare.restore_upstream_gzip(
        str(tmp_path / 't10k-images-idx3-ubyte.gz'), str(tmp_path / 'o')
    )
  named = gzip.compress(b'x')[:3] + b'\x08' + gzip.compress(b'x')[4:]
  (tmp_path / 't10k-labels-idx1-ubyte.gz').write_bytes(named)
  with pytest.raises(errors.InputError, match='gzip header fields'):
    prepare.restore_upstream_gzip(
        str(tmp_path / 't10k-labels-idx1-ubyte.gz'), str(tmp_path / 'o')
    )


def test_missing_debian_files_name_the_apt_get_line(tmp_path):
  with pytest.raises(errors.InputError) as error:
    prepare.restore_fashion_mnist(str(tmp_path), str(tmp_path / 'out'))
  assert str(error.value).endswith(
      'install the files with: apt-get install dataset-fashion-mnist'
  )


class TinyDataset(tfds.core.GeneratorBasedBuilder):
  """Three examples, generated: preparing it needs no download."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({'value': np.int64})
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    for index in range(3):
      yield index, {'value': index}


def test_tfds_prepares_a_dataset_in_the_installed_environment(tmp_path):
  """tfds imports importlib_resources to prepare any dataset but declares
  it only for Python < 3.9 (tensorflow/datasets#11212): without it this
  raised ModuleNotFoundError. The package declares it instead."""
  requires = importlib.metadata.requires('diffusion_distillation')
  assert any(re.match(r'importlib[_-]resources\b', r) for r in requires)
  builder = TinyDataset(data_dir=str(tmp_path))
  builder.download_and_prepare()
  assert builder.info.splits['train'].num_examples == 3


def test_an_unknown_dataset_name_is_refused_in_one_line(tmp_path):
  with pytest.raises(errors.InputError, match="tfds has no dataset 'fashion'"):
    prepare.prepare('fashion', data_dir=str(tmp_path))


def _registered_checksums() -> dict:
  """{file name: (size, sha256)} as tfds registers them for fashion_mnist."""
  path = os.path.join(
      os.path.dirname(tfds.__file__), 'url_checksums', 'fashion_mnist.txt'
  )
  registered = {}
  with open(path) as f:
    for line in f:
      _, size, sha256, name = line.split()
      registered[name] = (int(size), sha256)
  return registered


@needs_debian_fashion_mnist
def test_restored_debian_files_match_tfds_registered_checksums(tmp_path):
  prepare.restore_fashion_mnist(prepare.DEBIAN_FASHION_MNIST, str(tmp_path))
  for name, (size, sha256) in _registered_checksums().items():
    restored = (tmp_path / name).read_bytes()
    assert len(restored) == size, name
    assert hashlib.sha256(restored).hexdigest() == sha256, name


@needs_debian_fashion_mnist
def test_a_damaged_file_fails_tfds_checksum_check(tmp_path):
  """The checksum check is tfds's own and really runs: one byte changed in
  a restored file is refused, in one line."""
  debian = tmp_path / 'debian'
  debian.mkdir()
  for name in _registered_checksums():
    shutil.copy(os.path.join(prepare.DEBIAN_FASHION_MNIST, name), debian)
  damaged = bytearray((debian / 't10k-labels-idx1-ubyte.gz').read_bytes())
  damaged[100] ^= 0xFF
  (debian / 't10k-labels-idx1-ubyte.gz').write_bytes(bytes(damaged))
  with pytest.raises(errors.InputError) as error:
    prepare.prepare(
        'fashion_mnist',
        data_dir=str(tmp_path / 'tfds'),
        debian_dir=str(debian),
    )
  assert str(error.value).startswith(
      "fashion_mnist: t10k-labels-idx1-ubyte.gz does not match tfds's "
      'registered size and sha256; reinstall it with: apt-get install '
      '--reinstall dataset-fashion-mnist'
  )
  assert '\n' not in str(error.value)


@needs_debian_fashion_mnist
def test_prepared_fashion_mnist_is_complete(fashion_mnist_data_dir):
  builder = tfds.builder('fashion_mnist', data_dir=fashion_mnist_data_dir)
  assert builder.is_prepared()
  for split, count, pixel_sum in (
      ('train', 60_000, 3_431_114_169),
      ('test', 10_000, 573_469_082),
  ):
    assert builder.info.splits[split].num_examples == count
    images = input_pipeline.load_split(
        'fashion_mnist', split, data_dir=fashion_mnist_data_dir
    )
    assert images.images.shape == (count, 28, 28, 1)
    np.testing.assert_array_equal(
        np.bincount(images.labels, minlength=10), [count // 10] * 10
    )
    pixels = np.round((images.images.astype(np.float64) + 1) * 127.5)
    assert int(pixels.sum()) == pixel_sum
  # Prepared already: a second call leaves it as it is.
  assert prepare.prepare(
      'fashion_mnist', data_dir=fashion_mnist_data_dir
  ) == str(builder.data_dir)


@needs_debian_fashion_mnist
def test_the_pipeline_streams_real_fashion_mnist(fashion_mnist_data_dir):
  from configs import fashion_mnist

  dataset = fashion_mnist.get_config().dataset
  dataset.data_dir = fashion_mnist_data_dir
  images, labels = input_pipeline.TfdsStream(dataset).batch_for_step(
      seed=0, step=0, batch_size=64, substeps=2
  )
  assert images.shape == (2, 64, 28, 28, 1) and images.dtype == np.float32
  assert images.min() == -1.0 and images.max() == 1.0  # black background
  assert labels.shape == (2, 64) and len(np.unique(labels)) == 10
  # Real images, not noise: neighbouring pixels agree far more than not.
  rows = images[..., 0]
  assert np.mean(np.abs(np.diff(rows, axis=-1))) < 0.3


def test_the_command_wants_one_dataset_name(capsys):
  with pytest.raises(SystemExit) as exit_info:
    prepare.main(['prepare'])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == (
      'error: Give one dataset name, e.g. python -m '
      'diffusion_distillation.data.prepare fashion_mnist.\n'
  )
