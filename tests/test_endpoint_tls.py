"""The endpoint over TLS with client certificates: restic with --cacert and --tls-client-cert."""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.endpoint import Endpoint, authorization
from tests.support.server import Site

pytestmark = pytest.mark.slow


def server_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    certificate_path, key_path = folder / "server.pem", folder / "server-key.pem"
    certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return certificate_path, key_path


def test_mutual_tls_admits_only_the_clients_own_certificate(tmp_path: Path) -> None:
    site = Site(tmp_path / "site", ports=2)
    certificate, key = server_certificate(site.root)
    ca = site.root / "state" / "tls" / "ca.pem"
    site.config_path.write_text(site.config_path.read_text().replace(
        "[server]\n", f'[server]\ntls_cert = "{certificate}"\ntls_key = "{key}"\ntls_client_ca = "{ca}"\n'))
    assert site.cli("init").code == 0
    site.clients = {}
    for name in ("alpha", "beta"):
        result = site.cli("client", "add", name, "--replicate-to", "usb", "--issue-cert", "--json")
        assert result.code == 0, result.err
        site.clients[name] = result.json()
    alpha, beta = site.clients["alpha"], site.clients["beta"]
    assert str(alpha["url"]).startswith("rest:https://") and Path(str(alpha["certificate"])).is_file()
    endpoint = Endpoint(site, "alpha", "beta")
    endpoint.start()
    try:
        url = str(alpha["url"])
        tls = ["--cacert", str(certificate), "--tls-client-cert", str(alpha["certificate"])]
        assert site.restic(url, *tls, "init").returncode == 0
        backup = site.restic(url, *tls, "backup", "-q", str(site.config_path))
        assert backup.returncode == 0, backup.stderr
        assert len(json.loads(site.restic(url, *tls, "snapshots", "--json").stdout)) == 1
        # Without a client certificate, or with another client's: no access, even with the password.
        assert site.restic(url, "--cacert", str(certificate), "snapshots").returncode != 0
        assert _status(endpoint, "alpha", certificate, None) is None  # the handshake is refused
        assert _status(endpoint, "alpha", certificate, Path(str(beta["certificate"]))) == 403
        assert _status(endpoint, "alpha", certificate, Path(str(alpha["certificate"]))) == 200
        assert "authentication failed: endpoint=alpha user=cert:beta from=127.0.0.1" in endpoint.log()
    finally:
        endpoint.stop()


def _status(endpoint: Endpoint, client: str, ca: Path, certificate: Path | None) -> int | None:
    """The status of GET /<client>/config with the client's password and ``certificate``; None when
    the TLS handshake fails."""
    context = ssl.create_default_context(cafile=str(ca))
    if certificate is not None:
        context.load_cert_chain(certificate)
    connection = http.client.HTTPSConnection("127.0.0.1", endpoint.port(client), context=context, timeout=10)
    try:
        connection.request("GET", f"/{client}/config",
                           headers={"Authorization": authorization(client, endpoint.password(client))})
        return connection.getresponse().status
    except (ssl.SSLError, ConnectionError, OSError):
        return None
    finally:
        connection.close()


def test_plain_tls_serves_restic_and_refuses_plain_http(tmp_path: Path) -> None:
    site = Site(tmp_path / "site", ports=1)
    certificate, key = server_certificate(site.root)
    site.config_path.write_text(site.config_path.read_text().replace(
        "[server]\n", f'[server]\ntls_cert = "{certificate}"\ntls_key = "{key}"\n'))
    assert site.cli("init").code == 0
    site.clients = {"alpha": site.add_client("alpha", "usb")}
    endpoint = Endpoint(site, "alpha")
    endpoint.start()
    try:
        url = str(site.clients["alpha"]["url"])
        assert url.startswith("rest:https://")
        assert site.restic(url, "--cacert", str(certificate), "init").returncode == 0
        backup = site.restic(url, "--cacert", str(certificate), "backup", "-q", str(site.config_path))
        assert backup.returncode == 0, backup.stderr
        check = site.restic(url, "--cacert", str(certificate), "check", "--read-data")
        assert check.returncode == 0, check.stderr
        # Any certificate, or none, is fine without tls_client_ca; the password is what counts.
        assert _status(endpoint, "alpha", certificate, None) == 200
        plain = site.restic(url.replace("https://", "http://"), "snapshots", timeout=120)
        assert plain.returncode != 0
    finally:
        endpoint.stop()
