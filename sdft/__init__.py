"""sdft: fine-tune text-to-image diffusion models, with checkpoints chosen by measurement."""
