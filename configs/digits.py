"""Digits 8x8 (scikit-learn's bundled data): teacher, then distillation to 1 step.

The embedded default: real data that ships with the package, so it runs
offline on a laptop CPU.

  python -m diffusion_distillation.main --config=configs/digits.py \
      --workdir=workdirs/digits --mode=all

Hardware: 2 CPU cores. Time: about 15 minutes (teacher ~6 min, 6 rounds of
distillation 64 -> 32 -> ... -> 1 steps, samples after each round). Result:
sample grids per round in <workdir>/samples/, models in <workdir>/models/.

Then `--mode=eval` on the same workdir (about 10 minutes) scores every model:
measured FD 70.5 for the 4-step student against 70.2 for the teacher's best
DDIM and 99.8 for undistilled 4-step DDIM (README, "Sample quality against
steps").
"""

import ml_collections

from diffusion_distillation import config_checks


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.dataset = dict(
      name='digits',  # in-memory, bundled with scikit-learn
      class_conditional=True,
      num_classes=10,
      image_size=8,
      channels=1,
  )

  config.model = dict(
      # U-Net arguments, as in the release's `model.args`.
      ch=32,
      emb_ch=128,
      ch_mult=(1, 2),
      num_res_blocks=1,
      attn_resolutions=(4,),
      num_heads=1,
      head_dim=None,
      dropout=0.1,  # the teacher's; students use distill.dropout
      logsnr_input_type='inv_cos',  # 'inv_cos' | 'linear' | 'sigmoid'
      resblock_resample=True,
      num_groups=8,
      # Diffusion.
      # 'eps' | 'x' | 'v' | 'both'. 'v' here: with 1,500 teacher steps an
      # x-predicting teacher (the CIFAR-10 choice) still had gradient norms of
      # 20-165 and left speckled backgrounds; 'v' trained at norms of 0.2-0.4
      # and gave clean digits (same seed, same budget).
      mean_type='v',
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
      num_steps=1500,
      batch_size=128,
      # Optimizer steps per dispatch (lax.scan). On CPU the scan is unrolled
      # (see steps.py) and a dispatch costs little, so 1 compiles fastest.
      substeps=1,
      learning_rate=2e-3,
      warmup_steps=100,
      weight_decay=0.0,  # decoupled (AdamW)
      ema_decay=0.999,  # 0 copies the parameters
      # 'constant' | 'warmup' | 'debias'. With 'constant' (the release) 22% of
      # the EMA was still the random initialisation after 1,500 steps
      # (0.999^1500), and its samples were worse than the raw parameters'.
      ema_schedule='warmup',
      skip_nonfinite_updates=False,
  )

  config.distill = dict(
      start_num_steps=64,  # the teacher's DDIM steps; first student has half
      end_num_steps=1,
      steps_per_round=200,
      batch_size=128,
      substeps=1,
      learning_rate=5e-4,  # decays linearly to 0 over each round
      warmup_steps=0,
      weight_decay=0.0,
      ema_decay=0.0,
      ema_schedule='constant',  # unused without an EMA
      dropout=0.0,
      # Where the first teacher comes from: '' uses this workdir's teacher;
      # else a path to a workdir or to a model checkpoint directory.
      teacher_checkpoint='',
  )

  config.checkpoint = dict(
      every_steps=500,  # 0 disables; checkpoints also land every_secs
      every_secs=300.0,
      max_to_keep=2,  # periodic ones; every round's final model is kept
  )

  config.sample = dict(  # --mode=sample, and grids during training
      num_samples=100,
      batch_size=100,
      teacher_num_steps=64,  # DDIM steps for the continuous-time teacher
      sampler='ddim',  # 'ddim' | 'ancestral'
      logvar_type='fixed_large',  # ancestral variance
      clip_x=True,
      labels=(),  # class labels to sample; empty = 0, 1, 2, ...
      seed=1,
  )

  config.eval = dict(  # --mode=eval; see diffusion_distillation/evaluation.py
      num_samples=1000,  # per entry; the FD floor uses as many real images
      batch_size=500,
      seed=2,  # one starting noise shared by every model and sampler
      teacher_num_steps=(1, 2, 4, 8, 16, 32, 64, 128, 256),  # DDIM
      ancestral_num_steps=(4, 8, 16, 32, 64, 128, 256),
      reference_num_steps=256,  # "the teacher with many steps" for fidelity
  )

  config.log_every_steps = 100
  return config_checks.check_config(config)
