"""Which host a checkpoint download reaches: the S3 endpoint the environment names at the time of the
download, and the Hugging Face Hub's own host (``huggingface.co``, HTTPS) when ``HF_ENDPOINT`` is unset.

The hosts are real servers on 127.0.0.1: moto S3 servers (one in this process, one in a process of its own:
moto's in-process servers share one store, so a second one in this process could not hold other bytes) and
an HTTPS server with a certificate for ``huggingface.co`` made here, which the name resolves to for the test
(``socket.getaddrinfo``, the system resolver's entry point, answers 127.0.0.1 for that name only) and which
OpenSSL trusts through ``SSL_CERT_FILE``. Written for mutation testing (docs/development.md "Mutation
testing"); the S3 test costs about a second (the second server's start).
"""

from __future__ import annotations

import contextlib
import datetime
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.models
pytest.importorskip("torch")

from bmp_core.models.checkpoints import resolve_checkpoint  # noqa: E402
from tests.http_folder import serve_folder  # noqa: E402
from tests.models.test_checkpoints import moto_s3  # noqa: E402, F401  (the fixture)

HUB_HOST = "huggingface.co"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _moto_process() -> Iterator[str]:
    """The endpoint of a moto S3 server running in a process of its own (its own, empty store)."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the second moto server did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_an_s3_download_goes_to_the_endpoint_the_environment_names_now(
    tmp_path: Path, moto_s3: Any, monkeypatch: pytest.MonkeyPatch  # noqa: F811  (the imported fixture)
) -> None:
    """The S3 storage moved (another endpoint, the same bucket and key, other bytes) within one process, e.g. a
    long-lived driver: the next download reads the new endpoint, not the one of the first download."""
    import boto3

    uri = "s3://bmp-weights/w/sam.pt"
    moto_s3.put_object(Bucket="bmp-weights", Key="w/sam.pt", Body=b"weights on the first endpoint")
    assert resolve_checkpoint(uri, tmp_path / "cache1").read_bytes() == b"weights on the first endpoint"
    with _moto_process() as second:
        client = boto3.client("s3", endpoint_url=second)
        client.create_bucket(Bucket="bmp-weights")
        client.put_object(Bucket="bmp-weights", Key="w/sam.pt", Body=b"weights on the second endpoint")
        monkeypatch.setenv("AWS_ENDPOINT_URL", second)
        assert resolve_checkpoint(uri, tmp_path / "cache2").read_bytes() == b"weights on the second endpoint"
    # Both servers still answer for themselves (the bytes differ because the stores do).
    body = moto_s3.get_object(Bucket="bmp-weights", Key="w/sam.pt")["Body"].read()
    assert body == b"weights on the first endpoint"


def _hub_certificate(folder: Path) -> tuple[Path, Path]:
    """(certificate, key) PEM files: a self-signed certificate for ``huggingface.co`` (its own CA)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HUB_HOST)])
    now = datetime.datetime.now(datetime.timezone.utc)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(HUB_HOST)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "hub.pem", folder / "hub.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path, Path, Any]]:
    """(port, served folder, certificate file, handler) of an HTTPS server posing as ``huggingface.co``."""
    pytest.importorskip("cryptography")
    folder = tmp_path_factory.mktemp("hub")
    cert_file, key_file = _hub_certificate(folder)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert_file, key_file)
    root = folder / "served"
    (root / "o" / "r" / "resolve" / "main").mkdir(parents=True)
    (root / "o" / "r" / "resolve" / "main" / "w.pth").write_bytes(b"from the hub")
    with serve_folder(root, tls=tls) as (base, handler):
        yield int(base.rsplit(":", 1)[1]), root, cert_file, handler


@pytest.fixture
def hub_resolves_here(hub: tuple[int, Path, Path, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    """``huggingface.co:443`` is the hub server (every other name resolves as usual); its certificate is
    trusted; no proxy in the way. Returns the server's handler (its ``seen`` list emptied)."""
    port, _, cert_file, handler = hub
    resolve = socket.getaddrinfo

    def getaddrinfo(host: Any, service: Any, *args: Any, **kwargs: Any) -> Any:
        if host == HUB_HOST and service == 443:
            return resolve("127.0.0.1", port, *args, **kwargs)
        return resolve(host, service, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    for name in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    handler.seen.clear()
    return handler


def test_without_hf_endpoint_an_hf_reference_goes_to_huggingface_co_with_the_token(
    tmp_path: Path, hub_resolves_here: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.setenv("HF_TOKEN", "secret-token")
    assert resolve_checkpoint("hf://o/r/w.pth", tmp_path / "cache").read_bytes() == b"from the hub"
    # The same file by its https:// URL: the Hub's host too, so the token goes with it.
    url = f"https://{HUB_HOST}/o/r/resolve/main/w.pth"
    assert resolve_checkpoint(url, tmp_path / "cache").read_bytes() == b"from the hub"
    assert [(path, headers.get("Authorization"), headers.get("Host")) for path, headers in hub_resolves_here.seen] \
        == [("/o/r/resolve/main/w.pth", "Bearer secret-token", HUB_HOST)] * 2


def test_with_hf_endpoint_elsewhere_huggingface_co_gets_no_token(
    tmp_path: Path, hub_resolves_here: Any, http_folder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mirror named by ``HF_ENDPOINT`` is the Hub then: the token goes there, not to huggingface.co."""
    base, root, mirror = http_folder
    (root / "o" / "r" / "resolve" / "main").mkdir(parents=True)
    (root / "o" / "r" / "resolve" / "main" / "w.pth").write_bytes(b"from the mirror")
    monkeypatch.setenv("HF_ENDPOINT", base)
    monkeypatch.setenv("HF_TOKEN", "secret-token")
    assert resolve_checkpoint("hf://o/r/w.pth", tmp_path / "cache").read_bytes() == b"from the mirror"
    assert resolve_checkpoint(f"https://{HUB_HOST}/o/r/resolve/main/w.pth",
                              tmp_path / "cache").read_bytes() == b"from the hub"
    assert [h.get("Authorization") for _, h in mirror.seen] == ["Bearer secret-token"]
    assert [h.get("Authorization") for _, h in hub_resolves_here.seen] == [None]
