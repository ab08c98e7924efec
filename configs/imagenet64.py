"""ImageNet 64x64, class-conditional: the paper's teacher and its distillation.

Every value follows Google's released `imagenet64_base.py` /
`imagenet64_distill.py` (network, optimizer, rounds, preprocessing).
ImageNet cannot be downloaded by tfds: put ILSVRC2012_img_train.tar and
ILSVRC2012_img_val.tar (from https://image-net.org, registration needed) in
a directory and prepare it once; then train the teacher and distill it
1024 -> 512 -> ... -> 1 sampling steps (10 rounds of 50,000 optimizer
steps); re-running a command resumes it:

  python -m diffusion_distillation.data.prepare imagenet2012 \
      --data_dir=gs://BUCKET/tensorflow_datasets \
      --manual_dir=/path/to/imagenet_tars
  python -m diffusion_distillation.main --config=configs/imagenet64.py \
      --workdir=gs://BUCKET/imagenet64 --mode=all \
      --config.dataset.data_dir=gs://BUCKET/tensorflow_datasets
  python -m diffusion_distillation.main --config=configs/imagenet64.py \
      --workdir=gs://BUCKET/imagenet64 --mode=sample \
      --config.dataset.data_dir=gs://BUCKET/tensorflow_datasets \
      --config.sample.num_samples=50000 [--config.sample.labels='(1,2,3)']

Images: central square crop on the long side, area resize to 64x64, random
flip; labels condition the network. Samples cycle through
`sample.labels` (default: classes 0, 1, 2, ...).

Hardware: the paper used TPU v4, 64 chips (global batch 2048, 32 per chip);
run the command on every host with --distributed. Time: not reported.
Result (FID on 50,000 samples, paper, read off its figure): about 16 at 1
step, 7.4 at 2, 3.9 at 4, 2.95 at 8, 2.55 at 512; the undistilled teacher
with DDIM about 13.7 at 8 steps, 3.05 at 128 and 2.64 at 512.
"""

from configs import cifar10


def get_config():
  # The CIFAR-10 recipe (optimizer, schedule, loss weighting, checkpoints,
  # sampling) with ImageNet's data, network and batch.
  config = cifar10.get_config()
  config.dataset = dict(
      name='imagenet2012',  # tfds; 'train' split, 1,281,167 images
      class_conditional=True,
      num_classes=1000,
      image_size=64,  # central square crop, then area resize to this
      channels=3,
      data_dir='',  # '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
      manual_dir='',  # the ImageNet tar files' folder, to prepare the data
      shuffle_buffer=50_000,  # examples; the release's
  )
  config.model.update(
      ch=192,
      emb_ch=768,
      ch_mult=(1, 2, 3, 4),
      attn_resolutions=(8, 16, 32),
      num_heads=None,
      head_dim=64,  # heads = channels / 64
      dropout=0.1,  # the teacher's; students use distill.dropout
      mean_type='both',  # 'eps' | 'x' | 'v' | 'both'
  )
  config.train.update(
      # The release's configs give no length. 500,000 steps matches the
      # 10 x 50,000 steps of distillation (the paper: distillation takes no
      # longer than training the teacher).
      num_steps=500_000,
      batch_size=2048,
      learning_rate=3e-4,
      weight_decay=0.0,  # decoupled (AdamW)
  )
  config.distill.update(
      start_num_steps=1024,  # the teacher's DDIM steps; first student has half
      batch_size=2048,
      learning_rate=1e-4,  # decays linearly to 0 over each round
  )
  config.sample.batch_size = 512  # a multiple of the device count
  # FID against the first 50,000 train images in tfds' (shuffled) file
  # order; or set eval.reference_stats to the ADM reference batch
  # VIRTUAL_imagenet64_labeled.npz.
  config.eval.reference_num_images = 50_000
  return config
