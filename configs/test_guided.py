"""The tiny guided config the tests use: seconds per phase on a CPU.

  python -m diffusion_distillation.main --config=configs/test_guided.py \
      --workdir=/tmp/dd_test_guided --mode=all
"""

from configs import common
from configs import test


def get_config():
  config = common.add_guided_distillation(test.get_config())
  config.guidance.update(p_uncond=0.2, w_max=4.0)
  config.guide.update(num_steps=4, batch_size=8, substeps=2, learning_rate=5e-4)
  config.sample.update(guidance=1.0)
  config.eval.update(
      guidance=(0.0, 2.0),
      teacher_num_steps=(1, 4),
      ancestral_num_steps=(),
      reference_num_steps=4,
      student_samplers=('ddim', 'stochastic'),
  )
  return config
