"""Default recipe configurations (YAML), shipped as package data: `bsynth_hpc.configs`."""
