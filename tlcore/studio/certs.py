"""A self-signed certificate so the app can be served over HTTPS on a classroom LAN.

Browsers allow the camera only on secure origins (``https://`` or localhost). Students reach the
teacher's machine as ``http://<laptop>:8501``, which is neither; served with Streamlit's own
``server.sslCertFile`` / ``server.sslKeyFile`` and this certificate, the address becomes
``https://<laptop>:8501`` and the camera works once each browser accepts the certificate.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import socket
from pathlib import Path


def local_names() -> list[str]:
    """This machine's host names and addresses as students' browsers may reach it."""
    names = {"localhost", "127.0.0.1", socket.gethostname()}
    try:
        names.add(socket.getfqdn())
        for info in socket.getaddrinfo(socket.gethostname(), None):
            names.add(str(info[4][0]))
    except OSError:
        pass
    try:  # the address of the interface that would route outwards (no packet is sent)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            names.add(s.getsockname()[0])
    except OSError:
        pass
    return sorted(n for n in names if n and "%" not in n)


def make_certificate(out_dir: Path, hosts: list[str] | None = None, days: int = 825) -> tuple[Path, Path]:
    """Write ``tls-cert.pem`` and ``tls-key.pem`` (a self-signed certificate valid for ``hosts``,
    by default every name and address of this machine) to ``out_dir``; returns their paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    hosts = hosts or local_names()
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0]),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Transfer Learning Studio (self-signed)")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    out_dir.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out_dir / "tls-cert.pem", out_dir / "tls-key.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path
