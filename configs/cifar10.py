"""CIFAR-10 32x32, unconditional: the paper's teacher and its distillation.

Every value follows Google's released `cifar_base.py` / `cifar_distill.py`
(REFERENCE.md sections 8-9). Prepare the data once, then train the teacher
and distill it 8192 -> 4096 -> ... -> 1 sampling steps (13 rounds of 50,000
optimizer steps) in one workdir; re-running a command resumes it:

  tfds build cifar10 --data_dir=gs://BUCKET/tensorflow_datasets
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

import ml_collections

from diffusion_distillation import config_checks


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.dataset = dict(
      name='cifar10',  # tfds; 'train' split, 50,000 images
      class_conditional=False,
      num_classes=10,  # used only with class_conditional=True
      image_size=32,
      channels=3,
      data_dir='',  # tfds data_dir; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
      shuffle_buffer=50_000,  # examples; the release's
  )

  config.model = dict(
      # U-Net arguments, as in the release's `model.args`.
      ch=256,
      emb_ch=1024,
      ch_mult=(1, 1, 1),
      num_res_blocks=3,
      attn_resolutions=(8, 16),
      num_heads=1,
      head_dim=None,
      dropout=0.2,  # the teacher's; students use distill.dropout
      logsnr_input_type='inv_cos',  # 'inv_cos' | 'linear' | 'sigmoid'
      resblock_resample=True,
      num_groups=32,
      # Diffusion.
      mean_type='x',  # 'eps' | 'x' | 'v' | 'both'
      mean_loss_weight_type='snr_trunc',  # 'constant' | 'snr' | 'snr_trunc' | 'v_mse'
      logsnr_schedule=dict(name='cosine', logsnr_min=-20.0, logsnr_max=20.0),
  )

  config.adam = dict(  # shared by teacher training and distillation
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      grad_clip=1.0,  # by global norm, after averaging over devices
  )

  config.train = dict(  # the continuous-time teacher
      # The release's configs give no length. 800,000 steps (DDPM's CIFAR-10
      # length at the same batch) is longer than the 13 x 50,000 steps of
      # distillation, as the paper's time comparison requires.
      num_steps=800_000,
      batch_size=128,
      substeps=10,  # optimizer steps per dispatch (lax.scan)
      learning_rate=2e-4,
      warmup_steps=1000,
      weight_decay=1e-3,  # decoupled (AdamW)
      ema_decay=0.9999,
      # 'constant' | 'warmup' | 'debias'. The release's constant decay: after
      # 800,000 steps the initialisation's share is 0.9999^800000 = e^-80.
      ema_schedule='constant',
      skip_nonfinite_updates=False,
  )

  config.distill = dict(
      start_num_steps=8192,  # the teacher's DDIM steps; first student has half
      end_num_steps=1,
      steps_per_round=50_000,
      batch_size=128,
      substeps=10,
      learning_rate=5e-5,  # decays linearly to 0 over each round
      warmup_steps=0,
      weight_decay=0.0,
      ema_decay=0.0,  # the student is its own EMA
      ema_schedule='constant',  # unused without an EMA
      dropout=0.0,
      # Where the first teacher comes from: '' uses this workdir's teacher;
      # else a path to a workdir or to a model checkpoint directory.
      teacher_checkpoint='',
  )

  config.checkpoint = dict(
      every_steps=0,  # 0: by time only, as the release
      every_secs=900.0,
      max_to_keep=2,  # periodic ones; every round's final model is kept
  )

  config.sample = dict(  # --mode=sample, and grids during training
      num_samples=100,  # --config.sample.num_samples=50000 for FID
      batch_size=128,  # a multiple of the device count
      teacher_num_steps=1024,  # the release's eval_sampling_num_steps
      sampler='ddim',  # 'ddim' | 'ancestral'
      logvar_type='fixed_large',  # ancestral variance
      clip_x=True,  # the release's eval_clip_denoised
      labels=(),  # class labels to sample; empty = 0, 1, 2, ...
      seed=1,
  )

  config.log_every_steps = 100
  return config_checks.check_config(config)
