"""Secrets: taken from the process environment or a git-ignored ``.env`` file,
handed to the kernel as environment variables, and scrubbed from everything
stackbook writes (cell outputs, tracebacks, metadata, logs, ledger rows).

A secret is scrubbed in its plain form and in its base64 (standard and
URL-safe, with and without padding) and URL-encoded forms.
"""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

from stackbook.core import project
from stackbook.core.errors import SecretError

MIN_SECRET_LENGTH = 4  # shorter values would scrub ordinary text


def read_dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and # comments ignored; optional quotes removed."""
    values: dict[str, str] = {}
    if not path.exists():
        return values
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[7:]
        key, sep, value = line.partition("=")
        if not sep:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def collect(names: list[str], env: str, runbook: str | None = None) -> dict[str, str]:
    """Values of the declared secrets: process environment, then ``.env.<env>``, then ``.env``."""
    root = project.root()
    sources = [os.environ, read_dotenv(root / f".env.{env}"), read_dotenv(root / ".env")]
    found: dict[str, str] = {}
    missing: list[str] = []
    for name in names:
        value = next((s[name] for s in sources if s.get(name)), None)
        if value is None:
            missing.append(name)
        else:
            found[name] = value
    if missing:
        raise SecretError(
            f"missing secret{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
            f"{f' for runbook {runbook!r}' if runbook else ''}: set {'them' if len(missing) > 1 else 'it'} in the "
            f"environment or in {root / '.env'} (git-ignored)",
            runbook=runbook,
            env=env,
        )
    return found


def collect_optional(names: list[str], env: str) -> dict[str, str]:
    """Values of the optional secrets that are set; the missing ones are left out."""
    found: dict[str, str] = {}
    for name in names:
        try:
            found.update(collect([name], env))
        except SecretError:
            pass
    return found


def forms(value: str) -> set[str]:
    """Every encoding of a secret value that is scrubbed."""
    raw = value.encode()
    out = {value, quote(value, safe=""), quote_plus(value), quote(value)}
    for enc in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
        text = enc.decode()
        out.update({text, text.rstrip("=")})
    return {f for f in out if len(f) >= MIN_SECRET_LENGTH}


class Scrubber:
    """Replaces every form of every secret with ``[secret:NAME]``."""

    def __init__(self, secrets: dict[str, str] | None = None, enabled: bool = True):
        self.enabled = enabled
        self._replacements: dict[str, str] = {}
        for name, value in (secrets or {}).items():
            if value and len(value) >= MIN_SECRET_LENGTH:
                for form in forms(value):
                    self._replacements[form] = f"[secret:{name}]"
        # longest first, so a form that contains another is replaced whole
        ordered = sorted(self._replacements, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __bool__(self) -> bool:
        return bool(self.enabled and self._pattern)

    def text(self, value: str) -> str:
        if not self or not value:
            return value
        return self._pattern.sub(lambda m: self._replacements[m.group(0)], value)

    def obj(self, value: Any) -> Any:
        """Scrub every string inside a JSON-like structure (keys included)."""
        if not self:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return type(value)((self.text(k) if isinstance(k, str) else k, self.obj(v)) for k, v in value.items())
        if isinstance(value, list):
            return [self.obj(v) for v in value]
        if isinstance(value, tuple):
            return tuple(self.obj(v) for v in value)
        return value
