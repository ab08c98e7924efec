"""Progressive distillation for fast sampling of diffusion models (JAX)."""
