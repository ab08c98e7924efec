"""LSUN church_outdoor 128x128, unconditional: teacher and distillation.

Google's released `church128_base.py` / `church128_distill.py` differ from
the bedroom ones only in the data, so this config is `configs/lsun_bedroom.py`
on `lsun/church_outdoor` (126,227 images). Prepare the data once, then train
and distill 1024 -> 1 steps; re-running a command resumes it:

  python -m diffusion_distillation.data.prepare lsun/church_outdoor --data_dir=gs://BUCKET/tensorflow_datasets
  python -m diffusion_distillation.main --config=configs/lsun_church.py \
      --workdir=gs://BUCKET/lsun_church --mode=all \
      --config.dataset.data_dir=gs://BUCKET/tensorflow_datasets
  python -m diffusion_distillation.main --config=configs/lsun_church.py \
      --workdir=gs://BUCKET/lsun_church --mode=sample \
      --config.dataset.data_dir=gs://BUCKET/tensorflow_datasets \
      --config.sample.num_samples=50000

Hardware: the paper used TPU v4, 64 chips (--distributed on every host).
Time: not reported. Result: the paper reports LSUN FIDs in a figure only.
"""

from configs import lsun_bedroom


def get_config():
  config = lsun_bedroom.get_config()
  config.dataset.name = 'lsun/church_outdoor'
  return config
