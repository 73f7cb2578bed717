"""Secrets audit rules (SEC-0NN): no secret-looking literal where it must not be.

* SEC-001: the repository's tracked files (``git ls-files``, working-tree content).
* SEC-002: the executed notebooks in the run store for the audited environment
  (``<run store>/<env>/**/*.ipynb``): cell sources, outputs, tracebacks and
  metadata. Scrubbed markers (``[secret:NAME]``) are what the runner writes
  instead of a secret: they are fine.
* SEC-003: the project-local PostgreSQL's server log (``postgres.log`` beside its
  data; any size, read in blocks). The cluster logs connections but no statement
  text nor ERROR line (``stackbook.run.pgcluster.LOG_SETTINGS``); a hit here is a
  value that reached the log before that, or a setting changed by hand. With
  ``DATABASE_URL`` set, the server's log is where the server runs: skipped.

What counts as a secret (``detect(text)``):

* a private key block header (``-----BEGIN ... PRIVATE KEY-----``);
* AWS access key ids and secret access keys, GitHub and Slack tokens;
* an assignment to a name that says password/secret/token/api key/... of a quoted
  literal that looks random (length >= 8, two or more character classes,
  Shannon entropy >= 3 bits per character, not a placeholder such as
  ``${VAR}``, ``<password>``, ``changeme``, nor a filesystem path such as the
  working directory in a printed environment, ``PWD=/work/main``: the keyword
  ``pwd`` stays, its directory is not a credential); in configuration files
  (``.env``, ``.yml``, ``.ini`` ...) unquoted values count too;
* a URL with an inline password that looks random (``postgresql://u:p4ss...@host``);
* the value of a *known* secret (the database password, every secret that a
  runbook declares and this environment provides), in any of the forms the
  scrubber knows (plain, base64, URL-encoded).

Evidence names the kind, the place and the length, never the value.

Allowed: a line carrying ``stackbook-audit: allow`` (or detect-secrets'
``pragma: allowlist secret``), and files matching a glob in
``infra/audit/secrets_allowlist.txt`` (one glob per line, ``#`` comments; for
deliberately bad test fixtures). Allow-listed hits are counted in the pass
evidence, so an auditor sees that they exist.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import math
import os
import re
import subprocess
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stackbook.audit import Finding, Rule, finding, register, run_checks
from stackbook.core.errors import DatabaseUnavailable, NotebookError, SecretError

AREA = "secrets"
ALLOWLIST_FILE = "infra/audit/secrets_allowlist.txt"
INLINE_ALLOW = ("stackbook-audit: allow", "pragma: allowlist secret")
MAX_FILE_BYTES = 2_000_000
MIN_LENGTH = 8
MIN_ENTROPY = 3.0
CONFIG_SUFFIXES = (".env", ".yml", ".yaml", ".ini", ".cfg", ".conf", ".properties", ".toml")

_KEYWORDS = r"(?:password|passwd|passphrase|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key|" \
            r"client[_-]?secret|credentials?|auth)"
# (kind, pattern, value must look random, a lower-case substring that must occur first: a cheap prefilter)
# Patterns never cross a line ([ \t] rather than \s) and run over whole texts, not line by line.
PATTERNS: list[tuple[str, re.Pattern, bool, tuple[str, ...]]] = [
    ("private key", re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"), False, ("private key",)),
    ("AWS access key id",
     re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}(?![A-Z0-9])"),
     False, ("akia", "asia", "agpa", "aida", "aroa", "anpa", "anva", "aipa")),
    ("AWS secret access key",
     re.compile(r"(?i)aws_?secret_?access_?key['\"]?[ \t]*[:=][ \t]*['\"]?"
                r"(?P<value>[A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])"),
     False, ("secret_access", "secretaccess")),
    ("GitHub token", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"), False, ("ghp_", "gho_", "ghu_", "ghs_", "ghr_")),
    ("Slack token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), False, ("xox",)),
    ("password assignment",
     re.compile(r"(?i)(?<![\w.-])(?P<name>[\w.-]*" + _KEYWORDS + r"[\w.-]*)['\"]?[ \t]*(?::=|=>|[:=])[ \t]*[rbuRBU]?"
                r"(?P<q>['\"])(?P<value>[^'\"\s]+)(?P=q)"), True,
     ("pass", "pwd", "secret", "token", "key", "cred", "auth")),
    ("URL with inline password",
     re.compile(r"(?<![a-zA-Z0-9+.-])[a-zA-Z][a-zA-Z0-9+.-]{0,30}://(?P<name>[^\s:/@'\"<>]+):(?P<value>[^\s/@'\"<>]+)"
                r"@[^\s/@'\"<>]"), True, ("://",)),
]
CONFIG_PATTERN = ("password assignment", re.compile(
    r"(?im)^[ \t]*(?:export[ \t]+)?(?P<name>[\w.-]*" + _KEYWORDS + r"[\w.-]*)[ \t]*[:=][ \t]*(?P<value>[^\s'\"#]+)"
    r"[ \t]*(?:#.*)?$"), True, ("pass", "pwd", "secret", "token", "key", "cred", "auth"))

# The two patterns that would backtrack over every word of a text run as "find the literal, then match
# anchored around it" instead (same matches as their regular expressions above, ~20 times faster).
_KEYWORD = re.compile("(?i)" + _KEYWORDS)
_KEYWORD_LOWER = re.compile(_KEYWORDS)  # over the lower-cased text: 7 times faster than IGNORECASE
_IDENT_REST = re.compile(r"[\w.-]*")
_IDENT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
_ASSIGN_TAIL = re.compile(r"['\"]?[ \t]*(?::=|=>|[:=])[ \t]*[rbuRBU]?(?P<q>['\"])(?P<value>[^'\"\s]+)(?P=q)")
_URL_TAIL = re.compile(r"(?P<name>[^\s:/@'\"<>]+):(?P<value>[^\s/@'\"<>]+)@[^\s/@'\"<>]")


def _assignments(text: str, low: str) -> Iterator[tuple[int, int, str, str]]:
    last_end = -1
    keywords = _KEYWORD_LOWER.finditer(low) if len(low) == len(text) else _KEYWORD.finditer(text)
    for m in keywords:
        if m.start() < last_end:
            continue  # another keyword inside the same identifier
        end = _IDENT_REST.match(text, m.end()).end()
        start = m.start()
        while start > 0 and text[start - 1] in _IDENT_CHARS:
            start -= 1
        last_end = end
        tail = _ASSIGN_TAIL.match(text, end)
        if tail:
            yield start, tail.end(), tail.group("value"), text[start:end]


def _urls(text: str, _low: str) -> Iterator[tuple[int, int, str, str]]:
    i = text.find("://")
    while i >= 0:
        if i > 0 and text[i - 1].isalnum():
            m = _URL_TAIL.match(text, i + 3)
            if m:
                yield i, m.end(), m.group("value"), f"user {m.group('name')}"
        i = text.find("://", i + 3)


def _regex_matches(pattern: re.Pattern, kind: str) -> Callable[[str, str], Iterator[tuple[int, int, str, str]]]:
    """The matcher of one pattern: ``matcher(text, lowered)`` yields (start, end, value, name)."""
    return functools.partial(_regex_finditer, pattern)


def _regex_finditer(pattern: re.Pattern, text: str, _low: str) -> Iterator[tuple[int, int, str, str]]:
    for m in pattern.finditer(text):
        groups = m.groupdict()
        yield m.start(), m.end(), groups.get("value") or m.group(0), groups.get("name") or ""


FAST = {"password assignment": _assignments, "URL with inline password": _urls}
MATCHERS = [(kind, FAST.get(kind) or _regex_matches(pattern, kind), random_value, triggers)
            for kind, pattern, random_value, triggers in PATTERNS]
CONFIG_MATCHER = (CONFIG_PATTERN[0], _regex_matches(CONFIG_PATTERN[1], CONFIG_PATTERN[0]), True, CONFIG_PATTERN[3])

PLACEHOLDER = re.compile(
    r"(?i)(\$\{|\$\(|\{\{|\{[^}]*\}|\{%|%\(|^\$[A-Z_]|^<.*>$|\[secret:|\*\*\*|xxxx|changeme|change_me|"
    r"example|placeholder|"
    r"redacted|dummy|your[_-]|^none$|^null$|^true$|^false$|^secret$|^password$|^env:|^vault:|secretref|"
    r"secretkeyref|^os\.|environ|getenv|^\.\.\.$|"
    # words that mark a value as a fake for tests and docs (a real credential does not spell them out)
    r"secret|passw|hunter2|fake|sample|testing|not[-_]?real|canary)"
)
IDENTIFIER_LIKE = re.compile(r"^[a-z]+(?:[-_.][a-z0-9]+)*$|^[A-Z]+(?:[-_.][A-Z0-9]+)*$|^[A-Za-z]+(?:\.[A-Za-z_]+)+$")
SCRUBBED = re.compile(r"\[secret:[A-Za-z0-9_.-]+\]")
# An absolute path whose top directory is a plain word (/work/main, ~/src, /tmp/ssh-x/agent.1): what PWD,
# OLDPWD, GIT_ASKPASS or SSH_AUTH_SOCK hold. No '+' or '=', and a first segment in lower case after its first
# letter, so a base64 secret that happens to start with '/' still counts.
FILESYSTEM_PATH = re.compile(r"^~?/[A-Za-z][a-z0-9._@-]*(?:/[\w.@-]+)*/?$")


def _rule(id: str, title: str, severity: str, controls: Iterable[str], fix: str) -> Rule:
    return Rule(id=id, title=title, severity=severity, controls=tuple(controls), fix=fix, area=AREA)


# ---------------------------------------------------------------- detection


def entropy(value: str) -> float:
    """Shannon entropy in bits per character."""
    if not value:
        return 0.0
    counts = Counter(value)
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def looks_random(value: str) -> bool:
    """A literal that looks like a real credential rather than a name or a placeholder."""
    if len(value) < MIN_LENGTH or PLACEHOLDER.search(value) or IDENTIFIER_LIKE.match(value):
        return False
    if FILESYSTEM_PATH.match(value):
        return False
    classes = sum(bool(re.search(p, value)) for p in (r"[a-z]", r"[A-Z]", r"[0-9]", r"[^A-Za-z0-9]"))
    return classes >= 2 and entropy(value) >= MIN_ENTROPY


@dataclass
class Hit:
    kind: str
    where: str  # path, notebook cell ...
    line: int
    length: int
    name: str = ""  # the variable, user or secret name (never the value)

    def describe(self) -> str:
        what = f"{self.kind}" + (f" ({self.name})" if self.name else "")
        return f"{self.where}:{self.line}: {what}, {self.length} characters (value withheld)"


def _known_pattern(known: dict[str, str]) -> tuple[re.Pattern | None, dict[str, str]]:
    from stackbook.run.scrub import MIN_SECRET_LENGTH, forms

    by_form: dict[str, str] = {}
    for name, value in (known or {}).items():
        if value and len(value) >= max(MIN_SECRET_LENGTH, 6):
            for form in forms(value):
                by_form.setdefault(form, name)
    if not by_form:
        return None, {}
    ordered = sorted(by_form, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, ordered))), by_form


class Detector:
    """Finds secret-looking literals in text; built once per scan (known values compiled once)."""

    def __init__(self, known: dict[str, str] | None = None):
        self._known, self._known_names = _known_pattern(known or {})

    def detect(self, text: str, where: str, *, config: bool = False, first_line: int = 1) -> list[Hit]:
        if not text:
            return []
        found: list[tuple[int, int, str, int, str]] = []  # start, end, kind, length, name
        if self._known is not None:
            for m in self._known.finditer(text):
                found.append((m.start(), m.end(), "known secret value", len(m.group(0)), self._known_names[m.group(0)]))
        low = text.lower()
        for kind, matches, random_value, triggers in MATCHERS + ([CONFIG_MATCHER] if config else []):
            if not any(t in low for t in triggers):
                continue
            for start, end, value, name in matches(text, low):
                if any(a <= start < b or a < end <= b for a, b, *_ in found):
                    continue
                if SCRUBBED.fullmatch(value):
                    continue
                if random_value and not looks_random(SCRUBBED.sub("", value)):
                    continue
                found.append((start, end, kind, len(value), name))
        hits = []
        for start, _end, kind, length, name in sorted(found):
            line_start = text.rfind("\n", 0, start) + 1
            line_end = text.find("\n", start)
            line = text[line_start: line_end if line_end >= 0 else len(text)]
            if any(marker in line for marker in INLINE_ALLOW):
                continue
            hits.append(Hit(kind, where, first_line + text.count("\n", 0, start), length, name))
        return hits


def detect(text: str, where: str = "<text>", *, known: dict[str, str] | None = None,
           config: bool = False) -> list[Hit]:
    """Secret-looking literals in one text (see the module docstring)."""
    return Detector(known).detect(text, where, config=config)


def _is_config(path: str) -> bool:
    name = path.rsplit("/", 1)[-1].lower()
    return name.endswith(CONFIG_SUFFIXES) or name.startswith(".env")


# ---------------------------------------------------------------- notebooks


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        if value and all(isinstance(v, str) for v in value):
            yield "".join(value)
        else:
            for v in value:
                yield from _strings(v)
    elif isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str) and k.startswith("image/"):
                continue  # base64 images: random by nature
            yield from _strings(v)


def notebook_hits(nb: dict, where: str, detector: Detector) -> list[Hit]:
    """Hits in a notebook's cell sources, outputs (tracebacks included) and metadata."""
    hits: list[Hit] = []
    for i, cell in enumerate(nb.get("cells") or []):
        for part in ("source", "outputs", "metadata", "attachments"):
            for text in _strings(cell.get(part)):
                hits += detector.detect(text, f"{where} cell {i} {part}")
    for text in _strings(nb.get("metadata") or {}):
        hits += detector.detect(text, f"{where} metadata")
    return hits


# ---------------------------------------------------------------- repository and run store


def read_allowlist(root: Path) -> list[str]:
    path = root / ALLOWLIST_FILE
    if not path.exists():
        return []
    globs = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            globs.append(line)
    return globs


def allowed(path: str, globs: Iterable[str]) -> str | None:
    for glob in globs:
        if fnmatch.fnmatchcase(path, glob) or fnmatch.fnmatchcase(path, glob.rstrip("/") + "/*"):
            return glob
    return None


def tracked_files(root: Path) -> list[str]:
    proc = subprocess.run(["git", "-C", str(root), "ls-files", "-z"], capture_output=True, timeout=60)
    if proc.returncode != 0:
        raise _NotARepository(f"{root} is not a git repository: {proc.stderr.decode(errors='replace').strip()}")
    return [p for p in proc.stdout.decode().split("\0") if p]


class _NotARepository(Exception):
    """``git ls-files`` failed: the root is not a git repository (SEC-001 reports a skip, not an error)."""


@dataclass
class ScanResult:
    hits: list[Hit]
    scanned: int
    skipped: int
    allowed_hits: dict[str, int]


def scan_repository(root: Path, detector: Detector, allowlist: Iterable[str] = ()) -> ScanResult:
    root = Path(root)
    hits, allowed_hits = [], Counter()
    scanned = skipped = 0
    for rel in tracked_files(root):
        path = root / rel
        try:
            if not path.is_file() or path.stat().st_size > MAX_FILE_BYTES:
                skipped += 1
                continue
            data = path.read_bytes()
        except OSError:
            skipped += 1
            continue
        if b"\0" in data[:8192]:
            skipped += 1
            continue
        text = data.decode("utf-8", errors="replace")
        scanned += 1
        if rel.endswith(".ipynb"):
            try:
                found = notebook_hits(json.loads(text), rel, detector)
            except json.JSONDecodeError:
                found = detector.detect(text, rel)
        else:
            found = detector.detect(text, rel, config=_is_config(rel))
        glob = allowed(rel, allowlist)
        if glob and found:
            allowed_hits[glob] += len(found)
        elif found:
            hits += found
    return ScanResult(hits, scanned, skipped, dict(allowed_hits))


def scan_run_store(folder: Path, detector: Detector) -> ScanResult:
    hits, scanned, skipped = [], 0, 0
    folder = Path(folder)
    if folder.is_dir():
        for path in sorted(folder.rglob("*.ipynb")):
            rel = path.relative_to(folder.parent).as_posix()
            try:
                nb = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                skipped += 1
                continue
            scanned += 1
            hits += notebook_hits(nb, rel, detector)
    return ScanResult(hits, scanned, skipped, {})


def server_logs() -> list[Path] | None:
    """The project-local cluster's server log files; None when DATABASE_URL names another server (or no cluster)."""
    from stackbook.run import pgcluster

    if os.environ.get("DATABASE_URL"):
        return None
    info = pgcluster.load_info()
    if info is None:
        return None
    rotated = Path(info.data_dir) / "log"  # where logging_collector would write, had someone switched it on
    try:
        extra = sorted(rotated.glob("*.log")) if rotated.is_dir() else []
    except PermissionError:  # the cluster's OS user owns its data folder: not ours to read
        extra = []
    return [p for p in (pgcluster.log_path(info), *extra) if p.exists()]


LOG_BLOCK_BYTES = 1 << 20


def _log_blocks(path: Path) -> Iterator[tuple[int, str]]:
    """(first line number, text) of PATH in blocks of whole lines, about LOG_BLOCK_BYTES each."""
    line = 1
    with open(path, "rb") as fh:
        rest = b""
        while True:
            data = fh.read(LOG_BLOCK_BYTES)
            if not data:
                break
            data = rest + data
            cut = data.rfind(b"\n") + 1
            if cut == 0:  # no line end yet: a longer line than a block
                rest = data
                continue
            block, rest = data[:cut], data[cut:]
            yield line, block.decode("utf-8", errors="replace")
            line += block.count(b"\n")
        if rest:
            yield line, rest.decode("utf-8", errors="replace")


def scan_server_logs(paths: Iterable[Path], detector: Detector) -> ScanResult:
    hits, scanned, skipped = [], 0, 0
    for path in paths:
        try:
            for first, text in _log_blocks(Path(path)):
                hits += detector.detect(text, str(path), first_line=first)
        except OSError:
            skipped += 1
            continue
        scanned += 1
    return ScanResult(hits, scanned, skipped, {})


# ---------------------------------------------------------------- rules


def _pass_evidence(what: str, result: ScanResult) -> str:
    text = f"{result.scanned} {what} scanned, no secret-looking literal"
    if result.skipped:
        text += f"; {result.skipped} skipped (binary, too large or unreadable)"
    if result.allowed_hits:
        text += "; allow-listed: " + ", ".join(f"{n} in {g}" for g, n in sorted(result.allowed_hits.items()))
    return text


@register(_rule("SEC-001", "No secret-looking literal in the repository's tracked files", "critical",
                ("SOC2 CC6.1", "SOC2 CC8.1", "ISO27001 A.5.17", "ISO27001 A.8.4", "ISO27001 A.8.12"),
                "Remove the literal, rotate the credential (it is in git history: treat it as leaked), and read it "
                "from the environment or .env (git-ignored) declared as a runbook secret. Deliberately bad test "
                "fixtures go in " + ALLOWLIST_FILE + "."))
def repository(ctx: dict) -> Iterator[Finding]:
    root = Path(ctx["root"])
    try:
        result = scan_repository(root, ctx["detector"], ctx.get("allowlist", ()))
    except _NotARepository as exc:
        yield finding("SEC-001", "skip", f"repo:{root}", str(exc))
        return
    for hit in result.hits:
        yield finding("SEC-001", "fail", f"repo/{hit.where}:{hit.line}", hit.describe())
    if not result.hits:
        yield finding("SEC-001", "pass", f"repo:{root.name}", _pass_evidence("tracked files", result))


@register(_rule("SEC-002", "No secret in any executed notebook in the run store", "critical",
                ("SOC2 CC6.1", "SOC2 CC7.2", "ISO27001 A.5.17", "ISO27001 A.8.12", "ISO27001 A.8.15"),
                "Delete the executed notebook from the run store, rotate the credential, and declare the value as a "
                "runbook secret (metadata secrets) so the runner scrubs it; never print credentials."))
def run_store(ctx: dict) -> Iterator[Finding]:
    location = str(ctx["run_store"])
    if "://" in location and not location.startswith("file://"):
        yield finding("SEC-002", "skip", f"runs:{location}",
                      f"remote run store {location} is not scanned by this audit; scan it where it is stored")
        return
    folder = Path(location.removeprefix("file://"))
    result = scan_run_store(folder, ctx["detector"])
    for hit in result.hits:
        yield finding("SEC-002", "fail", f"runs/{hit.where.split(' ', 1)[0]}", hit.describe())
    if not result.hits:
        yield finding("SEC-002", "pass", f"runs:{folder}", _pass_evidence(f"executed notebooks under {folder}", result))


@register(_rule("SEC-003", "No secret in the project-local PostgreSQL's server log", "high",
                ("SOC2 CC6.1", "SOC2 CC7.2", "ISO27001 A.5.17", "ISO27001 A.8.12", "ISO27001 A.8.15"),
                "Stop the cluster, delete or truncate the server log (postgres.log beside the data folder), rotate "
                "the credential, and run `stackbook up` (it sets log_min_messages = log, log_min_error_statement "
                "= panic and log_statement = none, so statements and ERROR lines are not logged)."))
def server_log(ctx: dict) -> Iterator[Finding]:
    logs = ctx.get("server_logs")
    if logs is None:
        yield finding("SEC-003", "skip", "pg:log", "no project-local cluster here (DATABASE_URL names the server, "
                                                   "or `stackbook up` never ran): scan its log where it runs")
        return
    result = scan_server_logs(logs, ctx["detector"])
    for hit in result.hits:
        yield finding("SEC-003", "fail", f"pg/{Path(hit.where).name}:{hit.line}", hit.describe())
    if not result.hits:
        yield finding("SEC-003", "pass", "pg:log", _pass_evidence("server log files", result))


# ---------------------------------------------------------------- entry points


def known_secrets(env: str) -> dict[str, str]:
    """Values that are secrets for sure: the database password and every secret a runbook declares
    (``secrets`` and ``optional_secrets``) that this environment provides (process environment,
    ``.env.<env>``, ``.env``).

    A secret that is not set here, no database, or a notebook that cannot be read (OPS-002 reports it)
    leaves nothing to look for; anything else (an ``.env`` file that cannot be read) raises.
    """
    from stackbook.core import project
    from stackbook.run import db, scrub

    known: dict[str, str] = {}
    try:
        password = db.password(db.url())
    except DatabaseUnavailable:  # no database configured: nothing to look for
        password = None
    if password:
        known["DATABASE_PASSWORD"] = password
    for dotenv in (project.root() / f".env.{env}", project.root() / ".env"):
        scrub.read_dotenv(dotenv)  # first, and outside the try below: a file that cannot be read is an error
    for name in sorted(_declared_secret_names()):
        try:
            known.update(scrub.collect([name], env))
        except SecretError:  # not set in this environment (or too short to be told from ordinary text)
            continue
    return known


def _declared_secret_names() -> set[str]:
    """The names of the secrets the readable runbooks of the catalogue declare."""
    from stackbook.core import catalog, notebooks

    names: set[str] = set()
    for path in catalog.paths():
        try:
            meta = notebooks.load(path).metadata
        except NotebookError:  # the operations area reports it (OPS-002)
            continue
        names.update((meta.get("secrets") or []) + (meta.get("optional_secrets") or []))
    return names


def context(env: str, *, root: Path | None = None, run_store: str | None = None,
            known: dict[str, str] | None = None, allowlist: Iterable[str] | None = None,
            logs: Iterable[Path] | None = None) -> dict:
    """What the secrets rules need: repository root, run-store folder of ``env``, known values, allow-list,
    the server log files (LOGS; default: the project-local cluster's, see ``server_logs``).

    The run store is the environment file's ``run_store`` (the default one without a file); a malformed
    environment file is an ``EnvironmentFileError``, not a scan of some other folder.
    """
    from stackbook.core import environments, project
    from stackbook.run import runstore

    root = Path(root or project.root())
    if run_store is None:
        env_store = environments.load(env).get("run_store") if env in environments.available() else None
        run_store = runstore.base(env_store).rstrip("/") + f"/{env}"
    return {
        "root": root,
        "run_store": run_store,
        "detector": Detector(known_secrets(env) if known is None else known),
        "allowlist": list(read_allowlist(root) if allowlist is None else allowlist),
        "server_logs": server_logs() if logs is None else list(logs),
    }


def check_all(ctx: dict, rules: Iterable[str] | None = None) -> list[Finding]:
    return run_checks(AREA, ctx, rules)


def audit(env: str, **kw) -> list[Finding]:
    return check_all(context(env, **kw))


__all__ = ["detect", "Detector", "looks_random", "entropy", "scan_repository", "scan_run_store",
           "scan_server_logs", "server_logs", "check_all", "context", "audit", "known_secrets"]
