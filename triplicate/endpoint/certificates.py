"""Client certificates for mutual TLS, issued by a small CA kept in ``<state_dir>/tls/``.

    <state_dir>/tls/ca.pem              the CA's certificate: server.tls_client_ca points here
    <state_dir>/tls/ca-key.pem          its private key (0600)
    <state_dir>/tls/clients/<name>.pem  a client's certificate and key, for restic --tls-client-cert

A client certificate's subject common name is the client's name: the endpoint
accepts it only on that client's port.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from triplicate.fsutil import atomic_write

CA_DAYS = 3650
CLIENT_DAYS = 825


def ca_paths(state_dir: Path) -> tuple[Path, Path]:
    """(certificate, private key) of the server's client CA."""
    folder = state_dir / "tls"
    return folder / "ca.pem", folder / "ca-key.pem"


def client_certificate_path(state_dir: Path, client: str) -> Path:
    return state_dir / "tls" / "clients" / f"{client}.pem"


def ensure_ca(state_dir: Path) -> Path:
    """Create the CA when there is none; return its certificate's path."""
    certificate_path, key_path = ca_paths(state_dir)
    if certificate_path.is_file() and key_path.is_file():
        return certificate_path
    certificate_path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "triplicate client CA")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    atomic_write(key_path, _private_pem(key), mode=0o600)
    atomic_write(certificate_path, certificate.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return certificate_path


def issue_client_certificate(state_dir: Path, client: str) -> Path:
    """Issue (or re-issue) ``client``'s certificate, subject CN = its name; return the PEM's path
    (certificate then key, mode 0600), as restic's ``--tls-client-cert`` takes it."""
    ca_certificate_path, ca_key_path = ca_paths(state_dir)
    ensure_ca(state_dir)
    ca_certificate = x509.load_pem_x509_certificate(ca_certificate_path.read_bytes())
    ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, client)]))
        .issuer_name(ca_certificate.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CLIENT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    path = client_certificate_path(state_dir, client)
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    atomic_write(path, certificate.public_bytes(serialization.Encoding.PEM) + _private_pem(key), mode=0o600)
    return path


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
