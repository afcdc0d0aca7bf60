"""The credentials a node derives from the cluster secret, and nothing else.

Nodes of a group share one secret and no PKI. Every node derives the same TLS key
pair and self-signed certificate from it, so a client can pin the certificate: only a
holder of the secret can complete a handshake as a server. The client proves the same
knowledge with an HMAC token that it sends inside that pinned channel.

The certificate publishes a public key that is a function of the secret, so anyone
who can reach a node can test guesses of the secret offline. Hence the scrypt step
(each guess costs ~16 MiB and tens of milliseconds), and the secret must still be long
and random (e.g. `secrets.token_urlsafe(32)`), never a password.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import hmac

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID

SERVER_NAME = "tidestore-cluster"
"""The name every node's certificate carries and every client expects."""

TOKEN_SIZE = 32

_KEY_INFO = b"tidestore-control-tls-v1"
_SERIAL_INFO = b"tidestore-control-tls-serial-v1"
_TOKEN_LABEL = b"tidestore-control-auth-v1"
_SCRYPT_SALT = b"tidestore-cluster-secret-v1"
# Fixed, so that every node signs the very same certificate.
_NOT_BEFORE = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
_NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.timezone.utc)
# Order of the P-256 group: a private scalar lies in [1, n - 1].
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _check(secret: str) -> bytes:
    if not secret:
        raise ValueError("the cluster secret must not be empty")
    return secret.encode()


@functools.lru_cache(maxsize=8)
def _stretched(secret: str) -> bytes:
    return hashlib.scrypt(_check(secret), salt=_SCRYPT_SALT, n=2**14, r=8, p=1, dklen=32)


def _hkdf(secret: str, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(
        _stretched(secret)
    )


@functools.lru_cache(maxsize=8)
def cluster_identity(secret: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The P-256 key and self-signed certificate every node of the cluster serves."""
    # 40 bytes (64 bits more than the order) make the reduction's bias negligible.
    scalar = int.from_bytes(_hkdf(secret, _KEY_INFO, 40), "big") % (_P256_ORDER - 1) + 1
    key = ec.derive_private_key(scalar, ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)])
    public_key = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(int.from_bytes(_hkdf(secret, _SERIAL_INFO, 16), "big") >> 1)
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256(), ecdsa_deterministic=True)
    )
    return key, certificate


def cluster_certificate_pem(secret: str) -> bytes:
    """The certificate a client pins (QUIC `cadata`)."""
    return cluster_identity(secret)[1].public_bytes(serialization.Encoding.PEM)


@functools.lru_cache(maxsize=8)
def request_token(secret: str) -> bytes:
    """What a client sends to prove it holds the secret: HMAC-SHA256(secret, label)."""
    return hmac.new(_check(secret), _TOKEN_LABEL, hashlib.sha256).digest()
