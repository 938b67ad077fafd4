"""The RFC 3161 witness: a timestamping authority (TSA) signs the statement's digest and a time.

:meth:`Rfc3161Witness.publish` sends a ``TimeStampReq`` whose message imprint is the statement's
digest (SHA-256 of its encoding, :func:`~fedchain.anchor.witness.compute_anchor_digest`), with a
nonce, and keeps the DER ``TimeStampResp`` as the proof. :meth:`Rfc3161Witness.check` verifies a
proof with ``rfc3161-client`` against the TSA certificates the verifier trusts (``roots``): the
token's signature and certificate chain, the timestamping key usage, and that the imprint is
this statement's digest; its ``genTime`` is the stamp. A TSA keeps no record anyone can search,
so :meth:`Rfc3161Witness.history` lists nothing: receipts kept outside the ledger (the run
directory's ``anchors/``) are what catch a shortened ledger.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable, Sequence

from cryptography import x509
from rfc3161_client import (
    HashAlgorithm,
    PKIStatus,
    TimestampRequestBuilder,
    VerificationError,
    VerifierBuilder,
    decode_timestamp_response,
)
from rfc3161_client.tsp import TimeStampResponse

from fedchain.anchor.witness import Stamp, WitnessRecord, compute_anchor_digest
from fedchain.errors import AnchorError
from fedchain.ledger.codec import encode
from fedchain.ledger.objects import AnchorStatement

__all__ = ["Rfc3161Witness", "http_transport", "load_certificates"]

Transport = Callable[[bytes], bytes]
"""Send a DER ``TimeStampReq``, return the DER ``TimeStampResp``."""


def http_transport(url: str, timeout: float = 30.0) -> Transport:
    """Post requests to the TSA at ``url`` (RFC 3161 §3.4, ``application/timestamp-query``)."""

    def send(request: bytes) -> bytes:
        http = urllib.request.Request(  # noqa: S310 - the URL is the user's chosen TSA
            url, data=request, headers={"Content-Type": "application/timestamp-query"}
        )
        try:
            with urllib.request.urlopen(http, timeout=timeout) as answer:  # noqa: S310
                return bytes(answer.read())
        except (urllib.error.URLError, OSError) as e:
            raise AnchorError(f"the TSA at {url} did not answer: {e}") from e

    return send


def load_certificates(pem: bytes) -> list[x509.Certificate]:
    """The certificates of a PEM file (a TSA's certificate, or its chain)."""
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        raise AnchorError(f"not a PEM certificate file: {e}") from e


class Rfc3161Witness:
    """The TSA reached through ``send`` (None: check only), trusted through ``roots``."""

    kind = "rfc3161"

    def __init__(self, roots: Sequence[x509.Certificate], send: Transport | None = None) -> None:
        if not roots:
            raise AnchorError("an RFC 3161 witness needs the TSA certificate to trust")
        self.roots = tuple(roots)
        self.send = send

    def publish(self, statement: AnchorStatement) -> bytes:
        if self.send is None:
            raise AnchorError("this RFC 3161 witness has no TSA to send requests to")
        request = (
            TimestampRequestBuilder()
            .data(encode(statement))
            .hash_algorithm(HashAlgorithm.SHA256)
            .nonce(nonce=True)
            .cert_request(cert_request=True)
            .build()
        )
        proof = self.send(request.as_bytes())
        response = _decode(proof)
        if response.tst_info.nonce != request.nonce:
            raise AnchorError("the TSA answered with another request's nonce")
        self.check(statement, proof)
        return proof

    def check(self, statement: AnchorStatement, proof: bytes) -> Stamp:
        response = _decode(proof)
        builder = VerifierBuilder()
        for root in self.roots:
            builder = builder.add_root_certificate(root)
        try:
            builder.build().verify(response, compute_anchor_digest(statement))
        except VerificationError as e:
            raise AnchorError(f"the timestamp token does not verify: {_explain(e)}") from e
        info = response.tst_info
        return Stamp(
            int(info.gen_time.timestamp()),
            f"TSA {_tsa_name(response)}, token serial {info.serial_number}",
        )

    def history(self, genesis_hash: bytes, proofs: Sequence[bytes]) -> list[WitnessRecord]:
        return []


def _explain(error: VerificationError) -> str:
    """rfc3161-client's reason in a user's words (its certificate errors are OpenSSL stacks)."""
    text = str(error)
    if text.startswith("Error while verifying certificates"):
        return "it is not signed by a TSA that the trusted certificate vouches for"
    if text == "Mismatch between messages":
        return "it stamps another digest than this statement's (a different block or model)"
    return text


def _decode(proof: bytes) -> TimeStampResponse:
    try:
        response = decode_timestamp_response(proof)
    except ValueError as e:
        raise AnchorError(f"the RFC 3161 proof is not a TimeStampResp: {e}") from e
    if PKIStatus(response.status) != PKIStatus.GRANTED:
        raise AnchorError(f"the TSA did not grant the timestamp: {response.status_string}")
    return response


def _tsa_name(response: TimeStampResponse) -> str:
    certificates = [x509.load_der_x509_certificate(c) for c in response.signed_data.certificates]
    signer = next(iter(response.signed_data.signer_infos))
    for certificate in certificates:
        if certificate.serial_number == signer.serial_number:
            return certificate.subject.rfc4514_string()
    return signer.issuer.rfc4514_string()
