"""Guided distillation (Meng et al. 2023) as a wing of the core.

Classifier-free guidance distilled into one student for every guidance
strength w (docs/guided.md). The wing builds on the core and the core never
imports it: it gives the core's extension points its own values.

  guidance.py     the classifier-free math, network-free
  denoise.py      network + parameters + labels + w -> denoise function
                  (classifier-free for the teacher, w as an input for the
                  students)
  steps.py        the steps' condition hooks (label dropping, w per
                  example) and stage one's step, `guide_step`
  phases.py       the guided phase table: the teacher, stage one ('guide')
                  and the rounds, each with its hooks
  config_checks.py  the guided configs' checks
  sampling.py     the sampler at a guidance strength w
  pipeline.py     stage one, stage two's first teacher, sampling at w; the
                  guided modes, `WING` and `run_mode`
  evaluation.py   --mode=eval against w, on the core's evaluation loop
"""
