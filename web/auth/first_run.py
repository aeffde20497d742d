"""The one-time setup code that guards the first-run setup page.

Contract:
- First-run setup needs the one-time setup code: written to `<instance>/SETUP_CODE_FILE`
  (mode 0600) when first needed, printed in the log by `python app.py` at start while no
  account exists, and deleted once the first account exists (`web.auth.accounts.create_user`).
  Required from every address, loopback included: behind a reverse proxy on the same host
  (without TRUSTED_PROXIES) every visitor would look like loopback, and the server can run in
  a container where nobody is. Creating the admin with `python app.py create-user NAME
  --admin` needs no code.
- `setup_code()` makes or reads it; `setup_code_matches(given)` compares in constant time.
  Both need an app context.
"""
from __future__ import annotations

import hmac
import secrets
from pathlib import Path

from flask import current_app

from web.config import write_once

SETUP_CODE_FILE = "setup_code"


def setup_code_path() -> Path:
    return Path(current_app.instance_path) / SETUP_CODE_FILE


def setup_code() -> str:
    """The one-time code the setup page asks for (made the first time; needs an app context)."""
    return write_once(setup_code_path(), lambda: secrets.token_hex(10))


def setup_code_matches(given) -> bool:
    """Whether `given` (what the setup form sent, spaces around it ignored) is the code."""
    if not isinstance(given, str) or not given.strip():
        return False
    return hmac.compare_digest(given.strip().encode("utf-8", "surrogatepass"),
                               setup_code().encode())
