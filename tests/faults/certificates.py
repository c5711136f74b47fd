"""A throwaway public key infrastructure for the TLS tests, made with the ``openssl`` command.

:func:`make_certificates` writes, into a directory of the test's own:

* a certificate authority (``ca.pem``) and, signed by it, a server certificate for
  ``127.0.0.1`` and ``localhost`` (subject alternative names) and a client certificate;
* a second, unrelated authority (``other-ca.pem``): trusting it instead of the first is the
  "wrong CA" case.

Keys are unencrypted and the certificates valid for a day; nothing leaves the directory.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["Certificates", "make_certificates"]


@dataclass(frozen=True)
class Certificates:
    """The files :func:`make_certificates` wrote."""

    directory: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


#: elliptic-curve keys: made in milliseconds, where RSA keys take a second each
_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")


def _openssl(*args: str, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make certificates")
    done = subprocess.run(
        [openssl, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {done.stderr[-2000:]}")


def _authority(name: str, cwd: Path) -> None:
    _openssl(
        *("req", "-x509", *_KEY, "-nodes", "-days", "1", "-sha256"),
        *("-keyout", f"{name}-key.pem", "-out", f"{name}.pem", "-subj", f"/CN=aqueue test {name}"),
        *("-addext", "basicConstraints=critical,CA:TRUE"),
        *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
        cwd=cwd,
    )


def _leaf(name: str, extensions: str, cwd: Path) -> None:
    """A key and a certificate signed by ``ca``, with the given X.509v3 extensions."""
    _openssl(
        *("req", *_KEY, "-nodes", "-sha256"),
        *("-keyout", f"{name}-key.pem", "-out", f"{name}.csr", "-subj", f"/CN=aqueue {name}"),
        cwd=cwd,
    )
    (cwd / f"{name}.ext").write_text(extensions)
    _openssl(
        *("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem"),
        *("-CAcreateserial", "-days", "1", "-sha256", "-extfile", f"{name}.ext"),
        *("-out", f"{name}.pem"),
        cwd=cwd,
    )


def make_certificates(directory: Path) -> Certificates:
    """A CA, a server and a client certificate signed by it, and an unrelated CA."""
    directory.mkdir(parents=True, exist_ok=True)
    _authority("ca", directory)
    _authority("other-ca", directory)
    _leaf(
        "server",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
        directory,
    )
    _leaf(
        "client",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=clientAuth\n",
        directory,
    )
    for key in directory.glob("*-key.pem"):
        key.chmod(0o600)
    return Certificates(
        directory=directory,
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server-key.pem",
        client_cert=directory / "client.pem",
        client_key=directory / "client-key.pem",
        other_ca=directory / "other-ca.pem",
    )
