"""Data: sources, partitions, data keys, encrypted dataset files, a data holder's data."""
