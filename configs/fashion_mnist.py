"""Fashion-MNIST 28x28: the paper's CIFAR-10 experiment, scaled to 2 CPU cores.

The paper's recipe: an unconditional teacher trained in continuous time with
the release's U-Net family (iDDPM-style ResBlocks, attention at the lowest
resolution) and cosine log-SNR schedule, distilled with its own DDIM as the
teacher, halving the steps each round from 128 down to 1. Real data, offline:
Zalando's 60,000 training images through tfds's registered `fashion_mnist`
builder.

  apt-get install dataset-fashion-mnist
  python -m diffusion_distillation.data.prepare fashion_mnist
  python -m diffusion_distillation.main --config=configs/fashion_mnist.py \
      --workdir=workdirs/fashion_mnist

Hardware: 2 CPU cores. Time, measured on 2 idle cores (the figures below):
the teacher about 45 minutes, the 7 rounds about 41, 1,000 samples of every
model about 4 more; `python -m benchmarks.quality_vs_steps
--config=configs/fashion_mnist.py` adds the evaluation (about 85 minutes)
for under 3 hours in all; it writes its figures to benchmarks/results/.

`--config.dataset.class_conditional=True` trains and distills a
class-conditional model instead (labels 0-9, cycled when sampling).

How the budget was chosen (configs/fashion_mnist.py's network, 2 host CPU
devices, float32): a train step ran at 66 images/s, a distillation step at
46 and the sampler's forward at 230 images/s; 2 res blocks per level ran at
23 images/s, ch 48 at 16 and ch 64 at 10 (measured beside another job, the
ranking held). The evaluation samples 1,149 network passes per sample (DDIM
and the ancestral sampler at 1-256 steps, the 7 students), so 1,000 samples
each cost 83 minutes: the largest share of the 3 hours, and the reason for
the smallest network of the family.
"""

from configs import common


def get_config():
  config = common.get_config()
  config.dataset = dict(
      name='fashion_mnist',  # tfds; 'train' split, 60,000 images
      class_conditional=False,  # the paper's CIFAR-10 is unconditional
      num_classes=10,  # used only with class_conditional=True
      image_size=28,
      channels=1,
      data_dir='',  # '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
      shuffle_buffer=60_000,  # the whole split, 47 MB of PNG bytes
  )
  config.model.update(
      # The release's U-Net at its smallest useful size: 28 -> 14 -> 7,
      # attention at 7x7, 1.37 M parameters (CIFAR-10's is 60 M).
      ch=32,
      emb_ch=128,
      ch_mult=(1, 2, 2),
      num_res_blocks=1,
      attn_resolutions=(7,),
      # The paper's 0.2 guards 2,000 epochs of CIFAR-10 against
      # overfitting; 3 epochs here do not overfit, and dropout slows them.
      dropout=0.0,
      num_groups=8,
      # 'v', not CIFAR-10's 'x': on digits at a short budget x's students
      # lost most to distillation (1-step FD 1.34x the teacher's best, v
      # 1.18x: README, the paper's Table 1 on digits).
      mean_type='v',
  )
  config.train.update(
      # 2,800 x 64 = 3 epochs: 45 minutes at 66 images/s.
      num_steps=2800,
      batch_size=64,
      # On CPU the substeps are traced one after another (see
      # training/steps.py) and a dispatch costs little, so 1 compiles fastest.
      substeps=1,
      learning_rate=2e-3,  # the digits teacher's; Adam, clipped at norm 1
      warmup_steps=200,
      ema_decay=0.999,
      # With 'constant' (the release) 0.999^2800 = 6% of the EMA would still
      # be the random initialisation.
      ema_schedule='warmup',
  )
  config.distill.update(
      start_num_steps=128,  # the teacher's DDIM steps; 7 rounds to 1
      # 7 x 250 x 64 / 46 images/s = 41 minutes: under the teacher's 45, as
      # the paper's "no more than training the teacher" asks.
      steps_per_round=250,
      batch_size=64,
      substeps=1,
      learning_rate=5e-4,  # a quarter of the teacher's, as CIFAR-10's
  )
  config.checkpoint.update(
      every_steps=500,  # 0 disables; checkpoints also land every_secs
      every_secs=300.0,
  )
  config.sample.update(
      num_samples=1000,  # per model with --mode=sample; grids show 100
      batch_size=500,
      teacher_num_steps=128,
  )
  config.eval = dict(  # --mode=eval; see diffusion_distillation/evaluation/
      num_samples=1000,  # per entry, one shared starting noise
      batch_size=500,
      seed=2,
      teacher_num_steps=(1, 2, 4, 8, 16, 32, 64, 128, 256),  # DDIM
      ancestral_num_steps=(1, 2, 4, 8, 16, 32, 64, 128, 256),
      reference_num_steps=256,  # "the teacher with many steps" for fidelity
      # FD, precision and recall are measured in the features of a
      # classifier trained on the train split (0.909 test accuracy; see
      # evaluation/reference_network.py), against the 10,000 test
      # images. 0: its own training length; fewer only for quick tests.
      classifier_train_steps=0,
      # Each entry's samples also go to <workdir>/eval/samples/ in the ADM
      # layout (RGB), for standard FID with InceptionV3 elsewhere.
      save_samples=True,
  )
  return config
