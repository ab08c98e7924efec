"""CIFAR-10 32x32, unconditional: the paper's teacher and its distillation.

Every value follows Google's released `cifar_base.py` / `cifar_distill.py`
(network, optimizer, rounds). Prepare the data once, then train the teacher
and distill it 8192 -> 4096 -> ... -> 1 sampling steps (13 rounds of 50,000
optimizer steps) in one workdir; re-running a command resumes it:

  python -m diffusion_distillation.data.prepare cifar10 --data_dir=gs://BUCKET/tensorflow_datasets
  python -m diffusion_distillation.main --config=configs/cifar10.py \
      --workdir=gs://BUCKET/cifar10 --mode=all \
      --config.dataset.data_dir=gs://BUCKET/tensorflow_datasets
  python -m diffusion_distillation.main --config=configs/cifar10.py \
      --workdir=gs://BUCKET/cifar10 --mode=sample \
      --config.dataset.data_dir=gs://BUCKET/tensorflow_datasets \
      --config.sample.num_samples=50000

(`configs/cifar10_distill.py` runs the distillation phase on its own.)

Hardware: the paper used TPU v4, 8 chips for CIFAR-10 (global batch 128, so
16 per chip). Time: not reported; the paper states that all distillation
rounds together take no longer than training the teacher.
Result (FID on 50,000 samples, paper): 9.12 at 1 step, 4.51 at 2, 3.00 at 4,
2.57 at 8, about 2.4 at 16 and more; the undistilled teacher with DDIM about
9.7 at 16 steps, 3.3 at 128 and 2.6 at 512.
"""

from configs import common


def get_config():
  config = common.get_config()
  config.dataset = dict(
      name='cifar10',  # tfds; 'train' split, 50,000 images
      class_conditional=False,
      num_classes=10,  # used only with class_conditional=True
      image_size=32,
      channels=3,
      data_dir='',  # '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
      shuffle_buffer=50_000,  # examples; the release's
  )
  config.model.update(
      ch=256,
      emb_ch=1024,
      ch_mult=(1, 1, 1),
      num_res_blocks=3,
      attn_resolutions=(8, 16),
      dropout=0.2,
      mean_type='x',
  )
  config.train.update(
      # The release's configs give no length. 800,000 steps (DDPM's CIFAR-10
      # length at the same batch) is longer than the 13 x 50,000 steps of
      # distillation, as the paper's time comparison requires.
      num_steps=800_000,
      batch_size=128,
      learning_rate=2e-4,
      weight_decay=1e-3,
      # The release's constant-decay EMA: after 800,000 steps the
      # initialisation's share is 0.9999^800000 = e^-80.
      ema_decay=0.9999,
      ema_schedule='constant',
  )
  config.distill.update(
      start_num_steps=8192,
      batch_size=128,
      learning_rate=5e-5,
  )
  config.sample.update(
      num_samples=100,  # --config.sample.num_samples=50000 for FID
      teacher_num_steps=1024,  # the release's eval_sampling_num_steps
  )
  # --mode=eval: FID, Inception Score, precision and recall of every model
  # (diffusion_distillation/evaluation/loop.py, docs/reproducing.md).
  config.eval = dict(
      num_samples=50_000,  # per entry, the paper's
      batch_size=512,  # sampling and Inception; a multiple of the devices
      seed=2,  # one starting noise shared by every model and sampler
      # The teacher with DDIM, as the paper's comparison (1 to 512 steps).
      teacher_num_steps=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
      ancestral_num_steps=(),  # the teacher with the ancestral sampler
      # Required by --mode=eval: InceptionV3 weights (.npz converted from the
      # ADM evaluator's graph, or fidjax's pickle), local or gs://.
      inception_weights='',
      # '' = the statistics of reference_num_images train images, computed
      # once and cached in <workdir>/eval; or an ADM reference npz (mu,
      # sigma, and arr_0 for precision and recall).
      reference_stats='',
      reference_num_images=50_000,  # all of CIFAR-10's train split
  )
  return config
