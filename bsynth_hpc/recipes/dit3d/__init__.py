"""DiT-3D recipe (seed 000): TLE VAE-GAN compressor (``dit3d-vae``) + class-conditional DiT-3D
latent diffusion (``dit3d``), class-guided sampling (``bsynth sample dit3d``) and the
synthetic-augmentation classifier study (``bsynth study augment``).

Modules load lazily through the stage registry; importing this package imports nothing heavy.
"""
