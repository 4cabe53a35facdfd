"""Network architectures: the DDPM UNet that DDIM samples from."""

from ddim_jax.models.unet import UNet, create_model, timestep_embedding

__all__ = ["UNet", "create_model", "timestep_embedding"]
