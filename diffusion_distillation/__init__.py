"""Progressive distillation for fast sampling of diffusion models, in JAX/Flax."""
