"""LSUN church_outdoor 128x128: progressive distillation of an existing teacher.

`configs/lsun_bedroom_distill.py` on `lsun/church_outdoor`, as the release's
`church128_distill.py`: the distillation phase of `configs/lsun_church.py`
on its own (1024 -> 1 steps, checkpoints every 25 minutes; it also continues
a teacher trained with `configs/lsun_church.py` in the same workdir). Its
teacher is Google's released one, or your own:

  python -m diffusion_distillation.release_import \
      --config=configs/lsun_church_distill.py \
      --checkpoint=gs://gresearch/diffusion-distillation/church_original \
      --workdir=gs://BUCKET/lsun_church_distill \
      --config.dataset.data_dir=gs://BUCKET/tensorflow_datasets
  python -m diffusion_distillation.main \
      --config=configs/lsun_church_distill.py \
      --workdir=gs://BUCKET/lsun_church_distill --mode=distill \
      --config.dataset.data_dir=gs://BUCKET/tensorflow_datasets
  python -m diffusion_distillation.main \
      --config=configs/lsun_church_distill.py \
      --workdir=gs://BUCKET/lsun_church_distill --mode=sample \
      --config.dataset.data_dir=gs://BUCKET/tensorflow_datasets \
      --config.sample.num_samples=50000

Hardware: the paper used TPU v4, 64 chips (--distributed on every host).
Time and result: not reported in numbers (LSUN FIDs are in a figure only).
"""

from configs import lsun_bedroom_distill


def get_config():
  config = lsun_bedroom_distill.get_config()
  config.dataset.name = 'lsun/church_outdoor'
  return config
