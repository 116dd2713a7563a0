"""Helpers shared by the recipes (sample outputs, ...)."""
