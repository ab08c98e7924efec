"""ImageNet 64x64 with classifier-free guidance, distilled for every w.

Guided progressive distillation (Meng et al. 2023) on the paper's ImageNet
64 network (configs/imagenet64.py, the release's): the teacher trains with
a null class (p_uncond 0.1); stage one matches a w-conditioned student to
the guided teacher for w in [0, 4]; stage two distills it 1024 -> 512 ->
... -> 1 steps, w drawn per example. One workdir, each phase resumable:

  python -m diffusion_distillation.main --config=configs/imagenet64_guided.py \
      --workdir=gs://BUCKET/imagenet64_guided --mode=all \
      --config.dataset.data_dir=gs://BUCKET/tensorflow_datasets
  python -m diffusion_distillation.main --config=configs/imagenet64_guided.py \
      --workdir=gs://BUCKET/imagenet64_guided --mode=sample \
      --config.dataset.data_dir=gs://BUCKET/tensorflow_datasets \
      --config.sample.num_samples=50000 --config.sample.guidance=0.3

(--mode=all is train, guide, distill, sample; each runs alone too.) FID
of the samples at that w: python -m diffusion_distillation.evaluation.fid (see
docs/reproducing.md).

Hardware: TPU v4, 64 chips as for configs/imagenet64.py (--distributed on
every host). Time: not reported; no run of this config was made here.

Provenance of the values (docs/guided.md): the network, optimizer, data,
batch and rounds are the release's ImageNet 64 values. The guidance values
are not checked against the paper's text, which could not be read here:
p_uncond = 0.1 is within the 0.1-0.2 of Ho & Salimans (2021); w in [0, 4]
is the range of the paper's pixel-space figures as recalled; stage one's
length (50,000 steps, one round's) and learning rate (the rounds' 1e-4,
decaying to 0) are this project's choices. Check them against the paper
before quoting results as a reproduction.
"""

from configs import common
from configs import imagenet64


def get_config():
  config = common.add_guided_distillation(imagenet64.get_config())
  config.guidance.update(p_uncond=0.1, w_max=4.0)
  config.guide.update(
      num_steps=50_000,  # one round's length
      batch_size=2048,
      learning_rate=1e-4,  # as the rounds; decays linearly to 0
  )
  config.sample.guidance = 0.3  # a moderate strength for the FID samples
  # Guided --mode=eval scores digits only; FID at a w: --mode=sample with
  # sample.guidance=w, then python -m diffusion_distillation.evaluation.fid.
  del config['eval']
  return config
