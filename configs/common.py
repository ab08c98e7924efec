"""The fields every config has, with the values Google's release shares.

Each config starts from `get_config()` here and sets what its data and
budget need. Values marked `_required` (the dataset's shape, the network's
size, step counts, batch sizes, learning rates, the parameterisation) have
no default that fits every dataset: a config that leaves one unset is
refused when a run starts, naming the field.
"""

import ml_collections
from ml_collections import config_dict


def _required(kind):
  return config_dict.placeholder(kind)


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.dataset = dict(
      name=_required(
          str
      ),  # 'digits' (bundled) or a tfds name, see data/datasets.py
      class_conditional=_required(bool),
      num_classes=_required(int),  # used only when class_conditional
      image_size=_required(int),
      channels=_required(int),
  )

  config.model = dict(
      # U-Net arguments, as in the release's `model.args`.
      ch=_required(int),
      emb_ch=_required(int),
      ch_mult=_required(tuple),
      num_res_blocks=_required(int),
      attn_resolutions=_required(tuple),
      num_heads=1,  # give exactly one of num_heads and head_dim
      head_dim=None,
      dropout=_required(float),  # the teacher's; students use distill.dropout
      logsnr_input_type='inv_cos',  # 'inv_cos' | 'linear' | 'sigmoid'
      resblock_resample=True,
      num_groups=32,  # GroupNorm groups
      # 'float32' | 'bfloat16': the dtype of convolutions, dense layers and
      # attention matmuls. Parameters, optimizer state, EMA, GroupNorm
      # statistics, softmax, the diffusion math and the loss stay float32.
      # 'bfloat16' is the way to run fast on TPU and GPU; the paper configs
      # keep the release's float32.
      dtype='float32',
      # Diffusion.
      mean_type=_required(str),  # 'eps' | 'x' | 'v' | 'both'
      # 'constant' | 'snr' | 'snr_trunc' | 'v_mse'
      mean_loss_weight_type='snr_trunc',
      logsnr_schedule=dict(name='cosine', logsnr_min=-20.0, logsnr_max=20.0),
  )

  config.adam = dict(  # shared by teacher training and distillation
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      grad_clip=1.0,  # by global norm, after averaging over devices
  )

  config.train = dict(  # the continuous-time teacher
      num_steps=_required(int),
      batch_size=_required(int),  # global, over all devices
      substeps=10,  # optimizer steps per dispatch
      learning_rate=_required(float),
      warmup_steps=1000,  # linear, then constant
      weight_decay=0.0,  # decoupled (AdamW)
      ema_decay=0.9999,  # 0: no EMA (models are the raw parameters)
      # 'constant' (the release: the EMA starts at the initial parameters,
      # which keep a share ema_decay^n after n steps) | 'warmup' |
      # 'debias' (both start from the first update; see
      # training/train_state.py).
      ema_schedule='constant',
      # Keep the old parameters when an update is NaN/inf (each skip is
      # logged); stop when more than max_skipped_fraction of the last 100
      # updates were skipped.
      skip_nonfinite_updates=False,
      max_skipped_fraction=0.1,
  )

  config.distill = dict(
      start_num_steps=_required(int),  # the teacher's DDIM steps
      end_num_steps=1,  # each round halves the steps, down to this
      steps_per_round=50_000,
      # The rounds to 2 and to 1 step train for steps_per_round times this
      # (the paper's section 5.2: 2; the release's configs: 1).
      final_rounds_updates_multiplier=1,
      batch_size=_required(int),
      substeps=10,
      learning_rate=_required(float),  # decays linearly to 0 in each round
      warmup_steps=0,
      weight_decay=0.0,
      ema_decay=0.0,  # the student is its own EMA
      ema_schedule='constant',  # unused without an EMA
      skip_nonfinite_updates=False,
      max_skipped_fraction=0.1,
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
      num_samples=100,
      batch_size=128,  # a multiple of the device count
      teacher_num_steps=1024,  # DDIM steps of the continuous-time teacher
      sampler='ddim',  # 'ddim' | 'ancestral'
      logvar_type='fixed_large',  # ancestral variance
      clip_x=True,  # the release's eval_clip_denoised
      labels=(),  # class labels to sample; empty = 0, 1, 2, ...
      seed=1,
  )

  config.log_every_steps = 100
  return config


def add_guided_distillation(config):
  """The sections of guided distillation (Meng et al. 2023), added to a
  class-conditional config; see docs/guided.md. The teacher (`train`)
  learns with classifier-free guidance; `guide` is stage one (a
  w-conditioned student matched to the guided teacher in continuous time);
  `distill` is stage two, its rounds as in every config."""
  config.guidance = dict(
      p_uncond=_required(float),  # teacher: P(label -> null label)
      # Stages one and two draw w ~ U[w_min, w_max] per example.
      w_min=0.0,
      w_max=_required(float),
  )
  config.guide = dict(  # stage one: --mode=guide
      num_steps=_required(int),
      batch_size=_required(int),
      substeps=10,
      learning_rate=_required(float),  # decays linearly to 0 over num_steps
      warmup_steps=0,
      weight_decay=0.0,
      ema_decay=0.0,  # as the rounds: the student is its own EMA
      ema_schedule='constant',
      dropout=0.0,
      skip_nonfinite_updates=False,
      max_skipped_fraction=0.1,
  )
  config.sample.guidance = _required(float)  # w of --mode=sample and grids
  return config
