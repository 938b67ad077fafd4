"""The contribution report of a run: inputs, build, participants, HTML, plots, files.

``inputs`` reads and verifies a run directory (I/O); ``build`` and ``participants`` turn it into
a plain JSON-ready dict (pure); ``html`` and ``plots`` render that dict as one self-contained
page; ``files`` writes ``report.json`` and ``report.html``. DESIGN.md §3.6.
"""
