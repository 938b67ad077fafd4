"""Known-answer vectors and the golden ledger of docs/ledger-spec.md, and their generator."""
