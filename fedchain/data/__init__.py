"""Data: sources, partitions, encrypted dataset files, a data holder's data."""
