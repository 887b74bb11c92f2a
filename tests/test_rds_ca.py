"""The database CA bundle the program ships to every client: fetched over verified HTTPS, and
only ever a list of valid CA certificates."""

from __future__ import annotations

import contextlib
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from infra.rds_ca import CaBundleError, fetch_rds_ca_bundle, validate_ca_bundle
from tests.support.pulumi_mocks import make_ca_pem
from tests.support.services import _make_tls_files


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A test CA and a server certificate it signed for 127.0.0.1 / localhost."""
    return _make_tls_files(tmp_path_factory.mktemp("tls"))


@contextlib.contextmanager
def https_server(tls: tuple[Path, Path, Path], body: bytes) -> Iterator[int]:
    _, cert, key = tls

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path == "/eu-west-1/eu-west-1-bundle.pem"
            self.send_response(200 if found else 404)
            self.end_headers()
            if found:
                self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def template(port: int, host: str = "127.0.0.1") -> str:
    return f"https://{host}:{port}/{{region}}/{{region}}-bundle.pem"


def test_the_bundle_is_fetched_over_verified_https(tls_files: tuple[Path, Path, Path]) -> None:
    bundle = make_ca_pem("Amazon RDS eu-west-1 test CA") + make_ca_pem("another CA")
    trusting = ssl.create_default_context(cafile=str(tls_files[0]))
    with https_server(tls_files, bundle.encode()) as port:
        assert fetch_rds_ca_bundle("eu-west-1", trusting, template(port)) == bundle.strip() + "\n"
        # A server this machine's trust store does not know is refused, not believed.
        with pytest.raises(CaBundleError, match="CERTIFICATE_VERIFY_FAILED"):
            fetch_rds_ca_bundle("eu-west-1", url_template=template(port))
        # Wrong host name for the certificate (it names 127.0.0.1 and localhost only).
        hostless = ssl.create_default_context(cafile=str(tls_files[0]))
        with pytest.raises(CaBundleError, match="cannot download"):
            fetch_rds_ca_bundle("eu-west-1", hostless, template(port, "127.0.0.1.nip.io"))


def test_plain_http_and_bad_regions_are_refused() -> None:
    with pytest.raises(CaBundleError, match="plain HTTP"):
        fetch_rds_ca_bundle("eu-west-1", url_template="http://x/{region}.pem")
    with pytest.raises(CaBundleError, match="not an AWS region"):
        fetch_rds_ca_bundle("../../etc")


def test_only_valid_ca_certificates_pass(tls_files: tuple[Path, Path, Path]) -> None:
    _, server_cert, _ = tls_files
    with pytest.raises(CaBundleError, match="not a CA"):
        validate_ca_bundle(server_cert.read_text(), "test")  # a server (leaf) certificate
    with pytest.raises(CaBundleError, match="not a PEM list"):
        validate_ca_bundle("<html>rate limited</html>", "test")
    with pytest.raises(CaBundleError, match="larger than"):
        validate_ca_bundle(make_ca_pem() * 100, "test")
    pem = make_ca_pem()
    assert validate_ca_bundle(pem, "test") == pem.strip() + "\n"
