"""A run and its workdir: what a mode runs on.

  run.py            Run (config, mesh, store, writer, data, sampler) and
                    Wing (a kind of run's phases, checks and sampler)
  workdir.py        the workdir's layout, models, missing-model messages
  run_config.py     the run-config guard and its record
  checkpoints.py    orbax: save, restore, fall back past a bad checkpoint
  workdir_lock.py   one writer per workdir
  preemption.py     SIGTERM/SIGINT: save and stop at a safe point
  config_checks.py  every config value checked where a run starts

Imports: the math, the network, `training`, `data`, `utils`; pipeline.py
and the wings build on these modules, never the other way.
"""
