"""A local RFC 3161 timestamping authority, for tests and trials: real signed tokens, no internet.

:class:`LocalTsa` makes a root CA and a TSA certificate under it (ECDSA P-256, the TSA's with
the critical ``id-kp-timeStamping`` extended key usage RFC 3161 requires), and answers a DER
``TimeStampReq`` with a DER ``TimeStampResp`` whose token is a CMS SignedData over a ``TSTInfo``
(signed attributes: content type, message digest, ESS signing-certificate-v2), built with
asn1crypto and signed with cryptography. :meth:`LocalTsa.serve` puts it behind HTTP
(``POST``, ``application/timestamp-query``) on a loopback port, as a real TSA is reached.

It is a witness only in tests: its key lives in this process. A real deployment timestamps at
an authority the verifier trusts and gives ``fedchain verify`` that authority's certificate.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import http.server
import itertools
import threading
from collections.abc import Iterator

from asn1crypto import algos, cms, core, tsp, x509
from cryptography import x509 as cx509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedchain.anchor.local_http import serve_http

__all__ = ["LOCAL_TSA_POLICY", "LocalTsa"]

LOCAL_TSA_POLICY = "1.3.6.1.4.1.57264.99.1"
"""The policy OID of the local TSA's tokens (a private arc: it names no real policy)."""

_VALIDITY = datetime.timedelta(days=3650)


def _make_cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: cx509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    now: datetime.datetime,
) -> cx509.Certificate:
    name = cx509.Name([cx509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        cx509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer is not None else name)
        .public_key(key.public_key())
        .serial_number(cx509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + _VALIDITY)
    )
    if issuer is None:  # the root CA
        builder = builder.add_extension(cx509.BasicConstraints(ca=True, path_length=0), True)
        builder = builder.add_extension(
            cx509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
    else:
        builder = builder.add_extension(cx509.BasicConstraints(ca=False, path_length=None), True)
        builder = builder.add_extension(
            cx509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True
        )
    return builder.sign(issuer_key, hashes.SHA256())


class LocalTsa:
    """A timestamping authority in this process. ``root_pem`` is the certificate a verifier
    trusts (``fedchain verify --tsa-cert``)."""

    def __init__(self, name: str = "fedchain local TSA") -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = _make_cert(f"{name} root", root_key, None, root_key, now)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.certificate = _make_cert(name, self._key, self.root, root_key, now)
        self._serials = itertools.count(1)
        self._lock = threading.Lock()

    @property
    def root_pem(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.PEM)

    def respond(self, request_der: bytes) -> bytes:
        """The DER ``TimeStampResp`` to a DER ``TimeStampReq`` (granted, SHA-256 imprints)."""
        request = tsp.TimeStampReq.load(request_der)
        with self._lock:
            serial = next(self._serials)
        info = tsp.TSTInfo(
            {
                "version": "v1",
                "policy": LOCAL_TSA_POLICY,
                "message_imprint": request["message_imprint"],
                "serial_number": serial,
                "gen_time": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0),
                "accuracy": {"seconds": 1},
                "nonce": request["nonce"].native,
            }
        )
        token = self._sign(info.dump())
        response = tsp.TimeStampResp({"status": {"status": "granted"}, "time_stamp_token": token})
        return bytes(response.dump())

    def _sign(self, content: bytes) -> cms.ContentInfo:
        cert = x509.Certificate.load(self.certificate.public_bytes(serialization.Encoding.DER))
        cert_id = {"hash_algorithm": {"algorithm": "sha256"}, "cert_hash": cert.sha256}
        attributes = cms.CMSAttributes(
            [
                {"type": "content_type", "values": ["tst_info"]},
                {"type": "message_digest", "values": [hashlib.sha256(content).digest()]},
                {"type": "signing_certificate_v2", "values": [{"certs": [cert_id]}]},
            ]
        )
        signature = self._key.sign(attributes.dump(), ec.ECDSA(hashes.SHA256()))
        signer = cms.SignerInfo(
            {
                "version": "v1",
                "sid": cms.SignerIdentifier(
                    {
                        "issuer_and_serial_number": {
                            "issuer": cert.issuer,
                            "serial_number": cert.serial_number,
                        }
                    }
                ),
                "digest_algorithm": algos.DigestAlgorithm({"algorithm": "sha256"}),
                "signed_attrs": attributes,
                "signature_algorithm": algos.SignedDigestAlgorithm({"algorithm": "sha256_ecdsa"}),
                "signature": signature,
            }
        )
        signed = cms.SignedData(
            {
                "version": "v3",
                "digest_algorithms": [algos.DigestAlgorithm({"algorithm": "sha256"})],
                "encap_content_info": {
                    "content_type": "tst_info",
                    "content": core.ParsableOctetString(content),
                },
                "certificates": [cert],
                "signer_infos": [signer],
            }
        )
        return cms.ContentInfo({"content_type": "signed_data", "content": signed})

    @contextlib.contextmanager
    def serve(
        self, host: str = "127.0.0.1", port: int = 0, *, allow_remote: bool = False
    ) -> Iterator[str]:
        """Answer ``POST`` requests on ``host``:``port`` (loopback, any free port unless told
        otherwise; see :func:`~fedchain.anchor.local_http.serve_http`) while in the block;
        yields the URL."""
        tsa = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    answer, code = tsa.respond(body), 200
                except ValueError:
                    answer, code = b"", 400
                self.send_response(code)
                self.send_header("Content-Type", "application/timestamp-reply")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet: tests and benchmarks print their own lines

        with serve_http(Handler, host, port, allow_remote=allow_remote) as url:
            yield url
