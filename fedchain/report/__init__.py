"""The contribution report of a run: inputs, build, HTML, plots."""
