"""Hashing and signing: canonical update hashes, identities, signing roots."""
