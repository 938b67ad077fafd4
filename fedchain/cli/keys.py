"""``fedchain keygen``: an Ed25519 identity for a participant (client or coordinator)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedchain import identity
from fedchain.cli.common import PASSPHRASE_ENV, console, read_passphrase


def keygen(
    path: Annotated[
        Path,
        typer.Argument(help="Private key file to create; the public key goes beside it (.pub)."),
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
    """Create an Ed25519 identity: private key (PKCS#8, passphrase-encrypted) and public key."""
    if supernode:
        from fedchain.deploy import create_supernode_keys

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
    key = identity.generate_identity()
    private_path, public_path = identity.save_identity(key, path, passphrase)
    public = identity.public_key_bytes(key)
    console.print(
        f"private key  {private_path} ({'encrypted' if passphrase else 'unencrypted, mode 0600'})"
    )
    console.print(f"public key   {public_path}")
    console.print(f"identity     {public.hex()}")
    console.print(f"fingerprint  {identity.fingerprint(public)}")
