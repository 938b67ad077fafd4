"""Test certificates for a TLS SuperLink and the key pairs that authenticate SuperNodes.

Facts about Flower 1.41 these files are made for (checked against ``site-packages/flwr``):

* TLS: ``--ssl-ca-certfile --ssl-certfile --ssl-keyfile`` on the SuperLink, ``--root-certificates``
  on SuperNodes, ``root-certificates`` (an absolute path) in a ``flwr`` connection. The server
  certificate must name the address clients dial in its SubjectAltNames.
* SuperNode authentication (``--enable-supernode-auth``, TLS required): the SuperNode's key is an
  EC key on a NIST curve (we use SECP384R1); ``flower-supernode --auth-supernode-private-key``
  reads an **unencrypted OpenSSH** private key and ``flwr supernode register`` an OpenSSH public
  key (``ecdsa-sha2-nistp384 ...``). Flower cannot read an encrypted auth key, so that file's
  protection is its 0600 mode.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedchain.durable import write_atomically
from fedchain.errors import ConfigError
from fedchain.runs.layout import CA_CERT_FILENAME, SERVER_CERT_FILENAME, SERVER_KEY_FILENAME

__all__ = [
    "DEFAULT_HOSTS",
    "CertPaths",
    "create_supernode_keys",
    "create_test_certificates",
]

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
_KEY_NAME = re.compile(r"[A-Za-z0-9_-]+")  # a key pair's file name stem


@dataclass(frozen=True)
class CertPaths:
    """The three PEM files a TLS SuperLink and its clients need.

    ``ca_cert`` goes to SuperNodes (``--root-certificates``), to ``flwr`` connections
    (``root-certificates``) and to the SuperLink (``--ssl-ca-certfile``); ``server_cert`` and
    ``server_key`` (mode 0600) stay with the SuperLink.
    """

    ca_cert: Path
    server_cert: Path
    server_key: Path


def create_test_certificates(
    directory: Path,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = 30,
    *,
    overwrite: bool = False,
) -> CertPaths:
    """Write a fresh self-signed CA and a server certificate it signs for ``hosts``.

    For testing and for federations without a real PKI: every client must be given ``ca.crt``
    out of band. Each host becomes a SubjectAltName (an IP address entry when it parses as one,
    else a DNS entry); TLS clients check the address they dial against these. Keys are EC
    SECP384R1. The CA's private key is never written, so nothing else can be signed with this CA
    later: make new certificates (``overwrite=True``) to add a host. Existing files are refused
    (:class:`ConfigError`) unless ``overwrite`` is true.
    """
    if not hosts:
        raise ConfigError("give at least one host name or IP address for the certificate")
    if days < 1:
        raise ConfigError(f"certificate lifetime must be at least 1 day, got {days}")
    directory = Path(directory)
    paths = CertPaths(
        directory / CA_CERT_FILENAME,
        directory / SERVER_CERT_FILENAME,
        directory / SERVER_KEY_FILENAME,
    )
    if not overwrite:
        for path in (paths.ca_cert, paths.server_cert, paths.server_key):
            if os.path.lexists(path):
                raise ConfigError(f"{path}: already exists; pass overwrite to replace it")
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_cert = _build_ca_certificate(ca_key, now, days)
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = _build_server_certificate(server_key, ca_key, ca_cert, hosts, now, days)
    pem = serialization.Encoding.PEM
    write_atomically(paths.ca_cert, ca_cert.public_bytes(pem), mode=0o644)
    write_atomically(paths.server_cert, server_cert.public_bytes(pem), mode=0o644)
    key_bytes = server_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_atomically(paths.server_key, key_bytes, mode=0o600)
    return paths


def _build_ca_certificate(
    key: ec.EllipticCurvePrivateKey, not_before: datetime.datetime, days: int
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedchain test CA")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _build_server_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    hosts: Sequence[str],
    not_before: datetime.datetime,
    days: int,
) -> x509.Certificate:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def create_supernode_keys(
    directory: Path, name: str, *, overwrite: bool = False
) -> tuple[Path, Path]:
    """Write a SuperNode authentication key pair: ``NAME.key`` (0600) and ``NAME.pub``.

    Flower 1.41 wants an EC key on a NIST curve; this is SECP384R1, the private key in unencrypted
    OpenSSH format (what ``flower-supernode --auth-supernode-private-key`` reads) and the public key
    as one OpenSSH line (what ``flwr supernode register`` reads). This key only proves to the
    SuperLink which registered node is connecting; the fedchain identity key that signs updates is
    separate. Returns ``(private_path, public_path)``.
    """
    if not _KEY_NAME.fullmatch(name):
        raise ConfigError(f"SuperNode key name {name!r}: use letters, digits, '-' and '_' only")
    directory = Path(directory)
    private_path, public_path = directory / f"{name}.key", directory / f"{name}.pub"
    if not overwrite:
        for path in (private_path, public_path):
            if os.path.lexists(path):
                raise ConfigError(f"{path}: already exists; pass overwrite to replace it")
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public_bytes = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    write_atomically(private_path, private_bytes, mode=0o600)
    write_atomically(public_path, public_bytes + f" fedchain-{name}\n".encode(), mode=0o644)
    return private_path, public_path
