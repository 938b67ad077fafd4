"""Anchoring a ledger to a witness outside the coordinator: an EVM chain or an RFC 3161 TSA.

``witness`` is the interface, ``evm`` and ``rfc3161`` the two witnesses, ``receipts`` what the
coordinator publishes and records, ``check`` what ``fedchain verify --anchors`` runs,
``local_tsa`` a timestamping authority for tests and trials, ``contracts/`` the EVM contract's
source and its compiled artifact.
"""
