"""bsynth_hpc: train and sample brain-MRI generative models at HPC scale."""
__version__ = "0.1.0"
