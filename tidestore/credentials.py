"""S3 credentials of a node: given, or generated on first start and kept with the data
(mode 0600) so that a restart keeps serving the same clients."""

from __future__ import annotations

import json
import os
import secrets
import string

FILE = "credentials.json"
_KEY_ALPHABET = string.ascii_uppercase + string.digits


def generate() -> tuple[str, str]:
    access = "TS" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(18))
    secret = secrets.token_urlsafe(30)[:40]
    return access, secret


def load_or_create(data_dir: str, access: str | None, secret: str | None) -> tuple[str, str, bool]:
    """(access key, secret key, generated now?)."""
    if bool(access) != bool(secret):
        raise ValueError("give both an access key and a secret key, or neither")
    if access:
        return access, secret, False
    path = os.path.join(data_dir, FILE)
    try:
        with open(path) as f:
            stored = json.load(f)
        return stored["access_key"], stored["secret_key"], False
    except FileNotFoundError:
        pass
    access, secret = generate()
    os.makedirs(data_dir, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"access_key": access, "secret_key": secret}, f)
    return access, secret, True
