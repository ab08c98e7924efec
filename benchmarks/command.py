"""How a benchmark runs as a command: absl flags, as the package's commands.

Each benchmark defines its flags in a function that `run` calls when the
benchmark runs, so that importing one (guided_quality reuses
quality_vs_steps) defines none and the same flag name can serve several.
"""

import types

from absl import app
from absl import flags


def run(define_flags, main):
  """Defines the benchmark's flags, parses the command line with absl and
  calls `main` with the benchmark's own flags as attributes."""
  before = set(flags.FLAGS)
  define_flags()
  own = [name for name in flags.FLAGS if name not in before]

  def main_with_flags(argv):
    if len(argv) > 1:
      raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
    main(
        types.SimpleNamespace(**{name: flags.FLAGS[name].value for name in own})
    )

  app.run(main_with_flags)
