"""Run directories: their file names (layout), preparation, the model registry, a run's session,
federations, registrations."""
