"""Differential privacy: the client-level mechanism applied before an update is committed
(mechanism), example-level DP-SGD through Opacus (dpsgd), and the RDP accountant that fixes each
federation's participation cap and reports the epsilon a client has spent (accountant).

dpsgd and the accountant import Opacus (the ``dp`` extra; several seconds to import): only code
that runs with differential privacy on imports them.
"""
