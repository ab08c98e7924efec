"""InceptionV3 of the FID graph that the ADM evaluator runs, in Flax, and
the command that converts that graph's weights.

The parts, one module each:

  inception_net.py       the network (`InceptionV3`, `tf1_resize_bilinear`)
                         and its parameters' shapes;
  inception_weights.py   weight files (.npz or fidjax's pickle): read,
                         checked, written, fingerprinted;
  inception_graph.py     weights from the ADM evaluator's own TensorFlow
                         graph, `classify_image_graph_def.pb`;
  inception_features.py  `FeatureNetwork`: pool_3 features and logits of
                         many images on every device.

This module names them all in one place:

  python -m diffusion_distillation.evaluation.inception \
      --graph_def=classify_image_graph_def.pb --out=inception_fid.npz
"""

from absl import app
from absl import flags

from diffusion_distillation.evaluation.inception_features import FeatureNetwork
from diffusion_distillation.evaluation.inception_graph import convert_graph_def
from diffusion_distillation.evaluation.inception_graph import graph_scopes
from diffusion_distillation.evaluation.inception_net import INPUT_SIZE
from diffusion_distillation.evaluation.inception_net import NUM_LOGITS
from diffusion_distillation.evaluation.inception_net import POOL_DIM
from diffusion_distillation.evaluation.inception_net import InceptionV3
from diffusion_distillation.evaluation.inception_net import abstract_params
from diffusion_distillation.evaluation.inception_net import random_params
from diffusion_distillation.evaluation.inception_net import tf1_resize_bilinear
from diffusion_distillation.evaluation.inception_weights import WEIGHTS_HELP
from diffusion_distillation.evaluation.inception_weights import fingerprint
from diffusion_distillation.evaluation.inception_weights import load_params
from diffusion_distillation.evaluation.inception_weights import save_params
from diffusion_distillation.utils import errors
from diffusion_distillation.utils import files

__all__ = [
    'INPUT_SIZE',
    'NUM_LOGITS',
    'POOL_DIM',
    'WEIGHTS_HELP',
    'FeatureNetwork',
    'InceptionV3',
    'abstract_params',
    'convert_graph_def',
    'fingerprint',
    'graph_scopes',
    'load_params',
    'random_params',
    'save_params',
    'tf1_resize_bilinear',
]


def main(argv):
  del argv
  from diffusion_distillation.utils import cli

  cli.quiet_start()
  graph_def, out = flags.FLAGS.graph_def, flags.FLAGS.out
  try:
    source = files.as_path(graph_def)
    if not source.exists():
      raise errors.InputError(f'--graph_def={graph_def} does not exist.')
    params = convert_graph_def(source.read_bytes())
    save_params(params, out)
  except errors.InputError as e:
    cli.exit_on_bad_input(e)
  print(f'Wrote {out} (fingerprint {fingerprint(params)}).')


if __name__ == '__main__':
  # Flags only when run as a command, so that importing defines none.
  flags.DEFINE_string(
      'graph_def',
      None,
      'classify_image_graph_def.pb, the graph the ADM evaluator runs (local '
      'or gs://).',
  )
  flags.DEFINE_string(
      'out', None, 'Where to write the weights (.npz, local or gs://).'
  )
  flags.mark_flags_as_required(['graph_def', 'out'])
  app.run(main)
