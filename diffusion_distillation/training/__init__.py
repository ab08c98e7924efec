"""Training: the pure steps and what runs them.

  steps.py          the pure, jit-compiled train_step and distill_step and
                    their building blocks
  train_state.py    TrainState, the optimizer, the EMA
  phases.py         the phases as values (the core's table)
  trainer.py        phase -> network, optimizer, compiled step, state
  sharding.py       the 'data' mesh, replication, batch placement
  health.py         divergence and skipped-update checks
  training_loop.py  the one loop: resume, train with health checks, save

Imports: the math and the network (top level), `runs.workdir` and
`runs.checkpoints` for folders and storage; nothing that runs a mode.
"""
