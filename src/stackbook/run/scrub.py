"""Secrets: taken from the process environment or a git-ignored ``.env`` file,
handed to the kernel as environment variables, and scrubbed from everything
stackbook writes (cell outputs, tracebacks, metadata, logs, ledger rows).

A secret is scrubbed in its plain form, URL-encoded, as hex (lower and upper
case) and in base64 (standard and URL-safe alphabets): the whole encoding with
and without padding, and the part of it that stays the same wherever the secret
sits in a longer encoded text. Base64 encodes 3 bytes into 4 characters, so a
secret that follows a prefix (``Authorization: Basic base64(user:secret)``)
starts at one of three alignments; for each one (0, 1 or 2 bytes before it) the
characters that carry only the secret's bits are scrubbed, as CI systems that
mask secrets do. A declared secret shorter than ``MIN_SECRET_LENGTH`` is refused
(exit 2): it could not be scrubbed without scrubbing ordinary text.

What cannot be scrubbed (a value the runbook transforms itself, pixels, files a
runbook writes on its own) is listed in the book's secrets chapter.
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
from stackbook.core.files import read_text

MIN_SECRET_LENGTH = 4  # shorter values would scrub ordinary text


def read_dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and # comments ignored; optional quotes removed."""
    values: dict[str, str] = {}
    if not path.exists():
        return values
    for raw in read_text(path, what="secrets file", error=SecretError).splitlines():
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


def _lookup(names: list[str], env: str) -> tuple[dict[str, str], list[str]]:
    """The declared secrets that are set (process environment, then ``.env.<env>``, then ``.env``) and the rest."""
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
    return found, missing


def _refuse_short(found: dict[str, str], env: str, runbook: str | None) -> None:
    """A secret too short to scrub safely is an error that names it and its length, never its value."""
    short = sorted(name for name, value in found.items() if len(value) < MIN_SECRET_LENGTH)
    if short:
        raise SecretError(
            f"secret{'s' if len(short) > 1 else ''} {', '.join(short)}"
            f"{f' for runbook {runbook!r}' if runbook else ''} "
            f"{'are' if len(short) > 1 else 'is'} shorter than {MIN_SECRET_LENGTH} characters, too short to be "
            "scrubbed from outputs without scrubbing ordinary text: use a longer value (nothing was executed)",
            runbook=runbook,
            env=env,
        )


def collect(names: list[str], env: str, runbook: str | None = None) -> dict[str, str]:
    """Values of the declared secrets; a missing or too short one is a ``SecretError`` (exit 2)."""
    found, missing = _lookup(names, env)
    if missing:
        raise SecretError(
            f"missing secret{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
            f"{f' for runbook {runbook!r}' if runbook else ''}: set {'them' if len(missing) > 1 else 'it'} in the "
            f"environment or in {project.root() / '.env'} (git-ignored)",
            runbook=runbook,
            env=env,
        )
    _refuse_short(found, env, runbook)
    return found


def collect_optional(names: list[str], env: str, runbook: str | None = None) -> dict[str, str]:
    """Values of the optional secrets that are set; the missing ones are left out, a too short one refused."""
    found, _missing = _lookup(names, env)
    _refuse_short(found, env, runbook)
    return found


_URLSAFE = str.maketrans("+/", "-_")


def _base64_middles(raw: bytes) -> set[str]:
    """The base64 characters fixed by the secret alone at each of the three alignments, both alphabets.

    With ``k`` bytes before the secret, the first ``ceil(8k/6)`` characters of ``base64(k bytes + secret)``
    also carry bits of what comes before it, and every character after ``floor(8(k+n)/6)`` bits of what
    comes after it; the characters in between are the same for any prefix and any suffix.
    """
    out: set[str] = set()
    for k in (0, 1, 2):
        first, last = -(-8 * k // 6), 8 * (k + len(raw)) // 6
        encoded = base64.b64encode(bytes(k) + raw)[first:last].decode()
        out.update({encoded, encoded.translate(_URLSAFE)})
    return out


def forms(value: str) -> set[str]:
    """Every encoding of a secret value that is scrubbed."""
    raw = value.encode()
    out = {value, quote(value, safe=""), quote_plus(value), quote(value), raw.hex(), raw.hex().upper()}
    for enc in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
        text = enc.decode()
        out.update({text, text.rstrip("=")})
    out.update(_base64_middles(raw))
    return {f for f in out if len(f) >= MIN_SECRET_LENGTH}


def _byte_forms(value: str) -> set[bytes]:
    """Every form of a secret VALUE as UTF-8 bytes (how pickle stores text and bytes), and the value itself also as
    UTF-16 and UTF-32 (little-endian: numpy's text arrays) and Latin-1 bytes."""
    out = {form.encode() for form in forms(value)} | {value.encode("utf-16-le"), value.encode("utf-32-le")}
    try:
        out.add(value.encode("latin-1"))
    except UnicodeEncodeError:
        pass
    return out


class Scrubber:
    """Replaces every form of every secret with ``[secret:NAME]``."""

    def __init__(self, secrets: dict[str, str] | None = None, enabled: bool = True):
        self.enabled = enabled
        self._replacements: dict[str, str] = {}
        self._values: dict[str, str] = {}  # for ``secrets_in``
        for name, value in (secrets or {}).items():
            if value and len(value) >= MIN_SECRET_LENGTH:
                self._values[name] = value
                for form in forms(value):
                    self._replacements[form] = f"[secret:{name}]"
        # longest first, so a form that contains another is replaced whole
        ordered = sorted(self._replacements, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        self._needles: list[tuple[str, set[bytes]]] | None = None  # ``secrets_in``'s byte forms, made on first use

    def __bool__(self) -> bool:
        return bool(self.enabled and self._pattern)

    def text(self, value: str) -> str:
        if not self or not value:
            return value
        return self._pattern.sub(self._replacement, value)

    def _replacement(self, match: re.Match) -> str:
        return self._replacements[match.group(0)]

    def secrets_in(self, data: bytes | Any) -> set[str]:
        """Names of the secrets DATA (bytes, or a read-only ``mmap`` of a file) holds in any form ``forms`` knows
        (``_byte_forms``). For files stackbook cannot scrub, only keep or delete (kernel snapshots)."""
        if not self:
            return set()
        if self._needles is None:
            self._needles = [(name, _byte_forms(value)) for name, value in self._values.items()]
        return {name for name, needles in self._needles if any(data.find(n) != -1 for n in needles)}

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
