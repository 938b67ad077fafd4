"""Run directories: their layout, preparation, model registry, federations."""
