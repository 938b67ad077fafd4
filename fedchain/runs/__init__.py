"""Run directories: preparation, the model registry, a run's session, federations, registrations."""
