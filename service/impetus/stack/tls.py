"""A self-signed certificate for serving the team's LAN over HTTPS.

Apple's TLS clients (Safari, Chrome on a Mac, URLSession) accept a server
certificate only with the server's names in subjectAltName, an
extendedKeyUsage holding serverAuth, and a validity of at most 825 days
("Requirements for trusted certificates in iOS 13 and macOS 10.15",
support.apple.com/103769); without serverAuth they refuse it even once it is
trusted. The certificate is its own CA (basicConstraints CA:TRUE), so the
team trusts cert.pem itself.
"""

from __future__ import annotations

import ipaddress
import shutil
import socket
import subprocess
from pathlib import Path


def tls_paths(data_dir: Path) -> tuple[Path, Path]:
    return data_dir / "tls" / "cert.pem", data_dir / "tls" / "key.pem"


def default_names() -> list[str]:
    names = ["localhost", "127.0.0.1", "::1", socket.gethostname()]
    try:
        names.append(socket.gethostbyname(socket.gethostname()))
    except OSError:
        pass
    return list(dict.fromkeys(names))


MAX_DAYS = 825  # Apple's limit for a TLS server certificate


def make_certificate(data_dir: Path, names: list[str] | None = None, days: int = MAX_DAYS) -> tuple[Path, Path]:
    """Write a self-signed certificate and key (mode 600) for `names` (DNS names
    and IP addresses a client will use). Clients must be told to trust cert.pem."""
    if not 0 < days <= MAX_DAYS:
        raise ValueError(f"days: a TLS server certificate Apple accepts is valid for 1 to {MAX_DAYS} days")
    openssl = shutil.which("openssl")
    if openssl is None:
        raise FileNotFoundError("openssl is not installed (apt-get install openssl)")
    cert, key = tls_paths(data_dir)
    cert.parent.mkdir(parents=True, exist_ok=True)
    alt = []
    for name in names or default_names():
        try:
            ipaddress.ip_address(name)
            alt.append(f"IP:{name}")
        except ValueError:
            alt.append(f"DNS:{name}")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", str(days),
         "-subj", "/CN=impetus", "-addext", "subjectAltName=" + ",".join(alt),
         "-addext", "extendedKeyUsage=serverAuth", "-addext", "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    key.chmod(0o600)
    return cert, key
