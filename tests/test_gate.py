"""The approving executor's pure parts (fedchain/deploy/gate.py): the secrets it hands an
approved ClientApp over a pipe, and the refusal text a coordinator receives. Its behaviour
with a real SuperNode is in test_app_approval.py."""

from __future__ import annotations

import os

from fedchain.data import keys
from fedchain.deploy import gate
from fedchain.rounds.admission import MAX_CLIENT_TEXT_CHARS


def test_secrets_cross_the_pipe_intact() -> None:
    key = keys.DataKey(os.urandom(32))
    assert gate.decode_secrets(gate.encode_secrets(key, b"id pass")) == (key, b"id pass")
    phrase = keys.Passphrase("données 🔑".encode())
    assert gate.decode_secrets(gate.encode_secrets(phrase, None)) == (phrase, None)


def test_the_refusal_names_both_digests_within_what_a_ledger_keeps() -> None:
    refused, approved = "a" * 64, "b" * 64
    reason = gate.refusal_reason(refused, [approved], "0123456789abcdef")
    assert reason.startswith(gate.REFUSAL_PREFIX)
    assert reason.endswith(f"digests: {refused} vs {approved}")
    kept = reason[:MAX_CLIENT_TEXT_CHARS]  # what the coordinator's Rejection quotes
    assert f"app {'a' * 16}… is not the app it approved ({'b' * 16}…)" in kept
