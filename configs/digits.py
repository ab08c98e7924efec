"""Digits 8x8 (scikit-learn's bundled data): a teacher, distilled to 1 step.

The embedded default: real data that ships with the package, so it runs
offline on a laptop CPU.

  python -m diffusion_distillation.main --config=configs/digits.py \
      --workdir=workdirs/digits --mode=all

Hardware: 2 CPU cores. Time: about 11 minutes on 2 idle cores, for the
teacher, 6 rounds of distillation 64 -> 32 -> ... -> 1 steps and 1,000
samples of every model (benchmarks/README.md, "Quick start", has the
measurement). Result: sample grids per round in <workdir>/samples/, models
in <workdir>/models/.

Then `--mode=eval` on the same workdir scores every model: each student's
FD stays near the teacher's best DDIM while undistilled DDIM in as few
steps falls far behind below 8 steps (README, "Sample quality against
steps", has the figures and the command).
"""

from configs import common


def get_config():
  config = common.get_config()
  config.dataset = dict(
      name='digits',  # in-memory, bundled with scikit-learn
      class_conditional=True,
      num_classes=10,
      image_size=8,
      channels=1,
  )
  config.model.update(
      ch=32,
      emb_ch=128,
      ch_mult=(1, 2),
      num_res_blocks=1,
      attn_resolutions=(4,),
      dropout=0.1,
      num_groups=8,
      # 'v', not CIFAR-10's 'x': at this short budget an x-predicting
      # teacher still trained at large gradient norms and left speckled
      # backgrounds (benchmarks/README.md, "The digits default").
      mean_type='v',
  )
  config.train.update(
      # The teacher's FD has settled by then (benchmarks/README.md).
      num_steps=1500,
      batch_size=128,
      # On CPU the substeps are traced one after another (see
      # training/steps.py) and a dispatch costs little, so 1 compiles
      # fastest.
      substeps=1,
      learning_rate=2e-3,
      warmup_steps=100,
      ema_decay=0.999,
      # With 'constant' (the release) 0.999^1500 = 22% of the EMA would
      # still be the random initialisation after 1,500 steps.
      ema_schedule='warmup',
  )
  config.distill.update(
      start_num_steps=64,
      # Enough that the students are as good as with longer rounds, short
      # enough that distillation to 1 step takes less time than the teacher
      # (benchmarks/README.md, "The digits default").
      steps_per_round=150,
      # 2 (the paper's longer rounds to 2 and to 1 step) improves those two
      # students a little for 2 more rounds' time (README, "The paper's
      # Table 1 on digits"); 1 keeps the release's recipe.
      final_rounds_updates_multiplier=1,
      batch_size=128,
      substeps=1,
      learning_rate=5e-4,
  )
  config.checkpoint.update(
      every_steps=500,  # 0 disables; checkpoints also land every_secs
      every_secs=300.0,
  )
  config.sample.update(
      num_samples=1000,  # per model with --mode=sample; grids show 100
      batch_size=500,
      teacher_num_steps=64,
  )
  config.eval = dict(  # --mode=eval; see diffusion_distillation/evaluation/
      num_samples=1000,  # per entry; the FD floor uses as many real images
      batch_size=500,
      seed=2,  # one starting noise shared by every model and sampler
      teacher_num_steps=(1, 2, 4, 8, 16, 32, 64, 128, 256),  # DDIM
      ancestral_num_steps=(4, 8, 16, 32, 64, 128, 256),
      reference_num_steps=256,  # "the teacher with many steps" for fidelity
  )
  return config
