"""The CA certificates that sign the database's TLS certificate, for every client to verify it.

Aurora presents a certificate issued by Amazon RDS's certificate authorities, which no public
trust store contains. At deploy time the program reads AWS's bundle for the stack's region
(``https://truststore.pki.rds.amazonaws.com/<region>/<region>-bundle.pem``, fetched over HTTPS
with the certificate and host verified), checks that it holds only CA certificates, and ships
it in each project's connection bundle (``DatabaseCaBundle``): the helper, the image's
entrypoint and the central server then verify the database without any manual step. The
regional bundle (a few KB) fits a Secrets Manager secret; the global one (~170 KB) would not.
An air-gapped deployer sets ``db.caBundle`` to a PEM file instead.
"""

from __future__ import annotations

import datetime
import re
import ssl
import urllib.error
import urllib.request
from pathlib import Path

TRUSTSTORE_URL = "https://truststore.pki.rds.amazonaws.com/{region}/{region}-bundle.pem"
MAX_BUNDLE_BYTES = 32 * 1024  # the connection secret (64 KB in all) holds it with the rest
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d")


class CaBundleError(Exception):
    """A CA bundle that cannot be used; the message names where it came from and why."""


def validate_ca_bundle(pem: str, source: str) -> str:
    """The bundle, normalised, if it is a non-empty list of valid CA certificates."""
    from cryptography import x509

    if len(pem.encode()) > MAX_BUNDLE_BYTES:
        raise CaBundleError(f"{source} is larger than {MAX_BUNDLE_BYTES // 1024} KB")
    try:
        certificates = x509.load_pem_x509_certificates(pem.encode())
    except ValueError as exc:
        raise CaBundleError(f"{source} is not a PEM list of certificates ({exc})") from None
    now = datetime.datetime.now(datetime.UTC)
    valid = []
    for cert in certificates:
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise CaBundleError(f"{source} holds {cert.subject.rfc4514_string()}, not a CA")
        if cert.not_valid_after_utc > now:
            valid.append(cert)
    if not valid:
        raise CaBundleError(f"{source} holds no certificate that is still valid")
    return pem.strip() + "\n"


def read_ca_bundle_file(path: str) -> str:
    source = f"db.caBundle file {path}"
    try:
        text = Path(path).expanduser().read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise CaBundleError(f"cannot read {source}: {exc}") from None
    return validate_ca_bundle(text, source)


def fetch_rds_ca_bundle(
    region: str, context: ssl.SSLContext | None = None, url_template: str = TRUSTSTORE_URL
) -> str:
    """AWS's RDS CA bundle for ``region``, over HTTPS with the server verified."""
    if not _REGION.fullmatch(region):
        raise CaBundleError(f"{region!r} is not an AWS region name")
    url = url_template.format(region=region)
    if not url.startswith("https://"):
        raise CaBundleError(f"refusing to fetch the CA bundle over plain HTTP: {url}")
    if context is None:
        import certifi

        context = ssl.create_default_context(cafile=certifi.where())
    try:
        with urllib.request.urlopen(url, timeout=20, context=context) as response:  # noqa: S310 (https only)
            body = response.read(MAX_BUNDLE_BYTES + 1)
    except (urllib.error.URLError, OSError) as exc:
        raise CaBundleError(
            f"cannot download the RDS CA bundle {url} ({exc}). Every client verifies the "
            "database against it; without internet access, download it elsewhere and set "
            "`pulumi config set --path db.caBundle <file.pem>`"
        ) from None
    return validate_ca_bundle(body.decode("ascii", "replace"), url)
