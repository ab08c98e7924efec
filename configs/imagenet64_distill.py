"""ImageNet 64x64: progressive distillation of an existing teacher, 1024 -> 1.

The distillation phase of `configs/imagenet64.py` on its own, as the
release's `imagenet64_distill.py`. That config differs from its teacher
config in values this layout keeps in the base config's `distill` section
(lr 1e-4 decaying linearly over each round of 50,000 steps, no EMA, no
dropout) and in checkpointing every 25 instead of 15 minutes, the one change
here (checkpoint settings may change between runs of one workdir, so this
config also continues a teacher trained with `configs/imagenet64.py` in the
same workdir). Its teacher is Google's released one, or your own:

  python -m diffusion_distillation.release_import \
      --config=configs/imagenet64_distill.py \
      --checkpoint=gs://gresearch/diffusion-distillation/imagenet_original \
      --workdir=gs://BUCKET/imagenet64_distill \
      --config.dataset.data_dir=gs://BUCKET/tensorflow_datasets
  python -m diffusion_distillation.main \
      --config=configs/imagenet64_distill.py \
      --workdir=gs://BUCKET/imagenet64_distill --mode=distill \
      --config.dataset.data_dir=gs://BUCKET/tensorflow_datasets
  python -m diffusion_distillation.main \
      --config=configs/imagenet64_distill.py \
      --workdir=gs://BUCKET/imagenet64_distill --mode=sample \
      --config.dataset.data_dir=gs://BUCKET/tensorflow_datasets \
      --config.sample.num_samples=50000

Hardware: the paper used TPU v4, 64 chips (--distributed on every host).
Time: not reported. Result (FID, 50,000 samples, paper's figure): about 16
at 1 step, 7.4 at 2, 3.9 at 4, 2.95 at 8.
"""

from configs import imagenet64


def get_config():
  config = imagenet64.get_config()
  config.checkpoint.every_secs = 1500.0
  return config
