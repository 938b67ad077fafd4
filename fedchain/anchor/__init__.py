"""Anchoring a ledger to a witness outside the coordinator: an EVM chain or an RFC 3161 TSA.

``witness`` is the interface, ``evm`` and ``rfc3161`` the two witnesses, ``receipts`` what the
coordinator publishes and records, ``check`` what ``fedchain verify --anchors`` runs,
``local_tsa`` a timestamping authority and ``local_evm`` an EVM node for tests and trials (served
over loopback HTTP by ``local_http``: ``fedchain anchor serve-tsa`` / ``serve-evm``),
``contracts/`` the EVM contract's source and its compiled artifact.
"""
