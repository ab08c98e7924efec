"""Prepares a tfds dataset once, with tfds's own builder and checksums.

  python -m diffusion_distillation.data.prepare fashion_mnist [--data_dir=DIR]
  python -m diffusion_distillation.data.prepare cifar10 [--data_dir=DIR]
  python -m diffusion_distillation.data.prepare imagenet2012 \
      --manual_dir=DIR_WITH_THE_TARS [--data_dir=DIR]

Each runs the registered builder's `download_and_prepare`, so the files are
validated against tfds's registered sizes and sha256 sums and written as tfds
writes them; training then only reads (input_pipeline.py never prepares:
every host of a multi-host run would race to write the same files). Data
that is already prepared is left as it is.

Fashion-MNIST works offline: Debian's package `dataset-fashion-mnist`
(`apt-get install dataset-fashion-mnist`) installs Zalando's four original
files in /usr/share/datasets/fashion-mnist, with one change: Debian's
packaging rewrote each file's 10-byte gzip header (no stored file name, the
package's date as MTIME), so they fail tfds's checksums as they are. The
compressed data, CRC and size after the header are upstream's bytes, so
writing upstream's header back (`restore_upstream_gzip`) reproduces the
registered files exactly, and tfds's own checksum check passes on them.
Without the Debian files, tfds downloads as usual (network needed).

`tfds build` does the same work but cannot start in this project's
environment: it imports apache_beam, which the package does not install.
"""

import os
import struct
import sys
import tempfile

from absl import app
from absl import flags

from diffusion_distillation.utils import cli
from diffusion_distillation.utils import errors

DEBIAN_FASHION_MNIST = '/usr/share/datasets/fashion-mnist'
APT_FASHION_MNIST = 'apt-get install dataset-fashion-mnist'

# Upstream's gzip header of each Fashion-MNIST file: deflate, the FNAME flag,
# the MTIME Zalando's files carry (one per pair), no extra flags, Unix.
_FASHION_MNIST_MTIMES = {
    'train-images-idx3-ubyte.gz': 1504176606,
    'train-labels-idx1-ubyte.gz': 1504176606,
    't10k-images-idx3-ubyte.gz': 1504176627,
    't10k-labels-idx1-ubyte.gz': 1504176627,
}
_GZIP_MAGIC_DEFLATE = b'\x1f\x8b\x08'
_GZIP_HEADER_BYTES = 10  # magic, method, flags, MTIME, XFL, OS
_FNAME = 0x08


def prepare_command(name: str, data_dir: str = '') -> str:
  """The command that prepares `name` under `data_dir` ('' = tfds's default
  folder), as the "not prepared" messages quote it."""
  where = f' --data_dir={data_dir}' if data_dir else ''
  return f'python -m diffusion_distillation.data.prepare {name}{where}'


def upstream_gzip_header(file_name: str) -> bytes:
  """The 10-byte header and stored name that Zalando's `file_name` opens
  with (`file_name` is one of the four Fashion-MNIST files)."""
  mtime = _FASHION_MNIST_MTIMES[file_name]
  stored_name = file_name.removesuffix('.gz').encode('latin-1')
  return (
      _GZIP_MAGIC_DEFLATE
      + bytes([_FNAME])
      + struct.pack('<I', mtime)
      + b'\x00\x03'  # XFL 0, OS 3 (Unix)
      + stored_name
      + b'\x00'
  )


def restore_upstream_gzip(source: str, destination: str):
  """Writes Debian's `source` with upstream's gzip header in place of its own.

  Raises:
    errors.InputError when `source` is not a plain gzip file of deflate data
      without optional header fields (the only form Debian's files take).
  """
  with open(source, 'rb') as f:
    content = f.read()
  header = content[:_GZIP_HEADER_BYTES]
  if len(header) < _GZIP_HEADER_BYTES or not header.startswith(
      _GZIP_MAGIC_DEFLATE
  ):
    raise errors.InputError(
        f'{source} is not a gzip file; reinstall it with: '
        'apt-get install --reinstall dataset-fashion-mnist'
    )
  if header[3] != 0:
    raise errors.InputError(
        f'{source} has gzip header fields (flags {header[3]:#04x}) that '
        "Debian's files do not have; reinstall it with: apt-get install "
        '--reinstall dataset-fashion-mnist'
    )
  name = os.path.basename(source)
  with open(destination, 'wb') as f:
    f.write(upstream_gzip_header(name) + content[_GZIP_HEADER_BYTES:])


def restore_fashion_mnist(debian_dir: str, manual_dir: str):
  """The four Fashion-MNIST files of `debian_dir`, as Zalando published them,
  into `manual_dir` (where tfds's download manager looks for files by name).
  """
  for name in _FASHION_MNIST_MTIMES:
    source = os.path.join(debian_dir, name)
    if not os.path.exists(source):
      raise errors.InputError(
          f'{source} is missing; install the files with: {APT_FASHION_MNIST}'
      )
    restore_upstream_gzip(source, os.path.join(manual_dir, name))


def _download_config(manual_dir: str | None):
  import tensorflow_datasets as tfds

  return tfds.download.DownloadConfig(manual_dir=manual_dir)


def _download_and_prepare(builder, manual_dir: str | None, fix: str):
  """builder.download_and_prepare with the errors a user can fix in one
  line; `fix` says what to do about a file that fails its checksum."""
  from tensorflow_datasets.core.download import download_manager

  try:
    builder.download_and_prepare(download_config=_download_config(manual_dir))
  except download_manager.NonMatchingChecksumError as e:
    # tfds's message names the URL and a temporary path; the file's name is
    # what the user knows.
    words = str(e).split()
    url = words[1].rstrip(',') if len(words) > 1 else ''
    raise errors.InputError(
        f'{builder.name}: {url.rsplit("/", 1)[-1] or "a file"} does not match '
        f"tfds's registered size and sha256; {fix}."
    ) from None
  except AssertionError as e:  # tfds's "manual_dir is empty" and the like
    raise errors.InputError(
        f'{builder.name}: {str(e).strip().splitlines()[0]}'
    ) from None


def prepare(
    name: str,
    *,
    data_dir: str = '',
    manual_dir: str = '',
    debian_dir: str = DEBIAN_FASHION_MNIST,
) -> str:
  """Prepares the tfds dataset `name` under `data_dir` ('' = tfds's default,
  $TFDS_DATA_DIR or ~/tensorflow_datasets) unless it is prepared already.

  Args:
    name: a registered tfds builder ('fashion_mnist', 'cifar10', ...).
    data_dir: where the prepared dataset goes.
    manual_dir: a folder of files downloaded by hand (ImageNet's tars).
    debian_dir: where Debian's dataset-fashion-mnist installs its files;
      used for 'fashion_mnist' when manual_dir is not given.

  Returns:
    The folder of the prepared dataset.

  Raises:
    errors.InputError with the fix (a missing file, a checksum mismatch, an
    unknown name).
  """
  import tensorflow_datasets as tfds

  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
  except tfds.core.registered.DatasetNotFoundError:
    raise errors.InputError(
        f'tfds has no dataset {name!r}; give a registered name, e.g. '
        'fashion_mnist or cifar10.'
    ) from None
  if builder.is_prepared():
    return str(builder.data_dir)
  tfds.disable_progress_bar()
  if name == 'fashion_mnist' and not manual_dir and os.path.isdir(debian_dir):
    with tempfile.TemporaryDirectory(prefix='fashion_mnist_') as restored:
      restore_fashion_mnist(debian_dir, restored)
      _download_and_prepare(
          builder,
          restored,
          'reinstall it with: apt-get install --reinstall '
          f'dataset-fashion-mnist (its files are read from {debian_dir})',
      )
  else:
    _download_and_prepare(
        builder,
        manual_dir or None,
        'delete the file and prepare again',
    )
  return str(builder.data_dir)


_DATA_DIR = flags.DEFINE_string(
    'data_dir',
    '',
    'Where the prepared dataset goes (local or gs://); default: '
    '$TFDS_DATA_DIR or ~/tensorflow_datasets.',
)
_MANUAL_DIR = flags.DEFINE_string(
    'manual_dir',
    '',
    'A folder of files downloaded by hand (ImageNet). Fashion-MNIST uses '
    f"Debian's files in {DEBIAN_FASHION_MNIST} when they are installed.",
)


def main(argv):
  with cli.one_line_errors():
    if len(argv) != 2:
      raise errors.InputError(
          'Give one dataset name, e.g. python -m '
          'diffusion_distillation.data.prepare fashion_mnist.'
      )
    cli.quiet_start()
    where = prepare(
        argv[1], data_dir=_DATA_DIR.value, manual_dir=_MANUAL_DIR.value
    )
    print(f'{argv[1]} is prepared in {where}', file=sys.stdout)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
