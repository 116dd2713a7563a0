"""WFDM (seed 003): Wavelet-Fusion VAE compressor (stage ``wfdm-vae``) + modality/metadata-conditioned
3D U-Net latent diffusion (stage ``wfdm-ldm``); ``bsynth encode`` in between, ``bsynth sample wfdm`` after."""
