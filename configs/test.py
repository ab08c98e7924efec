"""The tiny config the tests use: seconds per phase on a CPU.

  python -m diffusion_distillation.main --config=configs/test.py \
      --workdir=/tmp/dd_test --mode=all
"""

from configs import digits


def get_config():
  config = digits.get_config()
  config.model.update(ch=8, emb_ch=16, num_groups=4, attn_resolutions=(4,))
  config.train.update(num_steps=4, batch_size=8, substeps=2, warmup_steps=2)
  config.distill.update(
      start_num_steps=4,
      end_num_steps=1,
      steps_per_round=4,
      batch_size=8,
      substeps=2,
  )
  config.checkpoint.update(every_steps=2, every_secs=3600.0)
  config.sample.update(num_samples=8, batch_size=8, teacher_num_steps=4)
  config.eval.update(
      num_samples=20,
      batch_size=10,
      teacher_num_steps=(1, 4),
      ancestral_num_steps=(4,),
      reference_num_steps=8,
  )
  config.log_every_steps = 2
  return config
