"""Training: the pure steps and what runs them.

  steps.py          the pure, jit-compiled train_step and distill_step and
                    their building blocks
  train_state.py    TrainState, the optimizer, the EMA
  phases.py         the phases as values (the core's table), with the
                    folders they checkpoint into
  trainer.py        phase -> network, optimizer, compiled step, state
  health.py         divergence and skipped-update checks
  checkpoints.py    orbax: save, restore, fall back past a bad checkpoint
  training_loop.py  the one loop: resume, train with health checks, save

Imports: the math and the network (top level) and `utils`; nothing that
runs a mode.
"""
