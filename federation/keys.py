"""Make an Ed25519 key pair for a site or the coordinator: ``python -m federation.keys <private-key-file>``.

Writes the private key (PKCS#8 PEM, mode 0600) to the file and prints the public key for the consortium's
key list. The private key stays at the site; point FEDERATION_SIGNING_KEY at the file.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .signing import fingerprint, public_pem


def generate(path: Path) -> str:
    if path.exists():
        raise FileExistsError(f"{path} exists: not overwriting a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    return f"# key sha256 {fingerprint(key)}\n{public_pem(key)}"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m federation.keys <private-key-file>")
    print(generate(Path(sys.argv[1])))
