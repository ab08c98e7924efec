"""A run and its workdir: what a mode runs on.

  run.py            Run (config, mesh, workdir, writer, data, sampler) and
                    Wing (a kind of run's phases, checks, sampler and
                    workdir)
  workdir.py        the workdir's layout, models, missing-model messages
  run_config.py     the run-config guard and its record
  workdir_lock.py   one writer per workdir
  config_checks.py  every config value checked where a run starts

Imports: the math, the network, sampling, `training`, `data`, `utils`;
pipeline.py, evaluation and the wings build on these modules, never the
other way.
"""
