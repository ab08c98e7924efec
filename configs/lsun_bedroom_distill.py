"""LSUN bedroom 128x128: progressive distillation of an existing teacher.

The distillation phase of `configs/lsun_bedroom.py` on its own (1024 -> 1
steps), as the release's `bedroom128_distill.py`. That config differs from
its teacher config in values this layout keeps in the base config's
`distill` section (lr 1e-4 decaying linearly over each round of 50,000
steps, no EMA, no dropout) and in checkpointing every 25 instead of 15
minutes, the one change here (checkpoint settings may change between runs
of one workdir, so this config also continues a teacher trained with
`configs/lsun_bedroom.py` in the same workdir). Its teacher is Google's
released one, or your own:

  python -m diffusion_distillation.release_import \
      --config=configs/lsun_bedroom_distill.py \
      --checkpoint=gs://gresearch/diffusion-distillation/bedroom_original \
      --workdir=gs://BUCKET/lsun_bedroom_distill \
      --config.dataset.data_dir=gs://BUCKET/tensorflow_datasets
  python -m diffusion_distillation.main \
      --config=configs/lsun_bedroom_distill.py \
      --workdir=gs://BUCKET/lsun_bedroom_distill --mode=distill \
      --config.dataset.data_dir=gs://BUCKET/tensorflow_datasets
  python -m diffusion_distillation.main \
      --config=configs/lsun_bedroom_distill.py \
      --workdir=gs://BUCKET/lsun_bedroom_distill --mode=sample \
      --config.dataset.data_dir=gs://BUCKET/tensorflow_datasets \
      --config.sample.num_samples=50000

Hardware: the paper used TPU v4, 64 chips (--distributed on every host).
Time and result: not reported in numbers (LSUN FIDs are in a figure only).
"""

from configs import lsun_bedroom


def get_config():
  config = lsun_bedroom.get_config()
  config.checkpoint.every_secs = 1500.0
  return config
