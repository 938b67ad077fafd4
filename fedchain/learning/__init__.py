"""Learning: model architectures, local training and evaluation, attacks."""
