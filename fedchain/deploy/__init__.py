"""Flower's real processes: certificates, supervision, SuperLink, flwr CLI."""
