"""``fedchain keygen``: an Ed25519 identity for a participant (client or coordinator)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedchain.cli.common import PASSPHRASE_ENV, console, read_passphrase
from fedchain.crypto import identity
from fedchain.deploy.certs import create_supernode_keys


def keygen(
    path: Annotated[
        Path,
        typer.Argument(
            help="Private key file to create (its folder is created if missing, mode 0700); "
            "the public key goes beside it (.pub)."
        ),
    ],
    no_passphrase: Annotated[
        bool,
        typer.Option("--no-passphrase", help="Store the private key unencrypted (file mode 0600)."),
    ] = False,
    passphrase_env: Annotated[
        str,
        typer.Option(
            "--passphrase-env",
            help="Environment variable holding the passphrase; if unset you are asked.",
        ),
    ] = PASSPHRASE_ENV,
    supernode: Annotated[
        bool,
        typer.Option(
            "--supernode",
            help="Instead: a SuperNode authentication key pair (EC P-384, unencrypted, mode 0600) "
            "for `fedchain join --auth-key`; its .pub goes into `fedchain register`.",
        ),
    ] = False,
) -> None:
    """Create an Ed25519 identity: the private key (OpenSSH format encrypted with your
    passphrase, or with --no-passphrase unencrypted PKCS#8 PEM; mode 0600 either way) and the
    public key (NAME.pub, 64 hex characters: your identity on the ledger)."""
    if supernode:
        _make_parent(path)
        name = path.name.removesuffix(".key")
        private_path, public_path = create_supernode_keys(path.parent, name)
        console.print(f"SuperNode private key  {private_path} (mode 0600; Flower reads it)")
        console.print(f"SuperNode public key   {public_path} (give it to `fedchain register`)")
        return
    passphrase = (
        None
        if no_passphrase
        else read_passphrase(passphrase_env, confirm=True, what=f"the identity {path}")
    )
    _make_parent(path)
    key = identity.generate_identity()
    private_path, public_path = identity.save_identity(key, path, passphrase)
    public = identity.public_key_bytes(key)
    console.print(
        f"private key  {private_path} ({'encrypted' if passphrase else 'unencrypted, mode 0600'})"
    )
    console.print(f"public key   {public_path}")
    console.print(f"identity     {public.hex()}")
    console.print(f"fingerprint  {identity.fingerprint(public)}")


def _make_parent(path: Path) -> None:
    """Create the key's folder if missing (mode 0700: it holds secrets), so that
    `fedchain keygen keys/alice.key` works in a fresh folder."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
