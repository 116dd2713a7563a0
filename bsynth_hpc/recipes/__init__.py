"""Recipes: one package per published system, each declaring one
:class:`~bsynth_hpc.engine.registry.Recipe` (its stages, sampler, demo, configs, SLURM chain) that
the engine registry discovers through the ``bsynth_hpc.recipes`` entry-point group. How to add one:
``recipes/README.md``. ``common`` holds the parts several recipes share.
"""
