"""Sampling a guided config's models at a guidance strength w: its teacher
(parameters without a w-embedding) with classifier-free guidance, two
network evaluations per step; its w-conditioned students with w as an
input, one evaluation."""

from diffusion_distillation import sampling
from diffusion_distillation.guided import denoise
from diffusion_distillation.guided import steps


class GuidedSampler(sampling.Sampler):
  """sampling.Sampler at a guidance strength w (an argument of the compiled
  sampler, so every w reuses one compilation per kind of parameters)."""

  def denoise_fn(self, params, labels, w):
    return denoise.denoise_fn(
        self._network,
        params,
        labels,
        w=w,
        null_label=steps.null_label_of(self._config),
        mean_type=self._config.model.mean_type,
        clip_x=self._config.sample.clip_x,
    )

  def strength(self, guidance: float | None) -> float:
    """`guidance`, by default sample.guidance."""
    if guidance is None:
      guidance = self._config.sample.guidance
    return float(guidance)
