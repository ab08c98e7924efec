"""LSUN bedroom 128x128, unconditional: the paper's teacher and distillation.

Every value follows Google's released `bedroom128_base.py` /
`bedroom128_distill.py` (network, optimizer, rounds, preprocessing). The
paper trains ImageNet 64 and LSUN with one recipe (optimizer, batch 2048,
1024 -> 1 steps in rounds of 50,000), so this config starts from
`configs/imagenet64.py` and changes the data and the network. Prepare the
data once (tfds downloads it), then train the teacher and distill it;
re-running a command resumes it:

  python -m diffusion_distillation.data.prepare lsun/bedroom --data_dir=gs://BUCKET/tensorflow_datasets
  python -m diffusion_distillation.main --config=configs/lsun_bedroom.py \
      --workdir=gs://BUCKET/lsun_bedroom --mode=all \
      --config.dataset.data_dir=gs://BUCKET/tensorflow_datasets
  python -m diffusion_distillation.main --config=configs/lsun_bedroom.py \
      --workdir=gs://BUCKET/lsun_bedroom --mode=sample \
      --config.dataset.data_dir=gs://BUCKET/tensorflow_datasets \
      --config.sample.num_samples=50000

Images: central square crop, bilinear antialiased resize to 128x128, random
flip.

Hardware: the paper used TPU v4, 64 chips (global batch 2048, 32 per chip);
run the command on every host with --distributed. Time: not reported.
Result: the paper reports LSUN FIDs in a figure only (no table); expect
distilled 4- to 8-step samples close to the teacher's 1024-step DDIM ones.
"""

from configs import imagenet64


def get_config():
  config = imagenet64.get_config()
  config.dataset = dict(
      name='lsun/bedroom',  # tfds; 'train' split, 3,033,042 images
      class_conditional=False,  # LSUN has no labels
      image_size=128,  # central square crop, then bilinear resize to this
      channels=3,
      data_dir='',  # '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
      shuffle_buffer=50_000,  # examples; the release's
  )
  config.model.update(
      ch=64,
      emb_ch=768,
      ch_mult=(1, 2, 4, 6, 8),
      num_res_blocks=3,
      attn_resolutions=(8, 16, 32),
      head_dim=64,
      dropout=0.1,
  )
  del config.sample['labels']  # unconditional
  return config
