"""A round: contribution scores, rewards, the coordinator, the re-check."""
