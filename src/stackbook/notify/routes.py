"""Routes: the ``notify:`` list of an environment file, checked and resolved.

::

    book_url: https://handbook.example.com       # links to runbook pages in messages
    notify:
      - events: [failed, timed_out, recovered]
        runbooks: [load_*, build_warehouse]      # names or glob patterns; default: every runbook
        channels:
          - "json://hooks.example.com/stackbook"
          - "slack://${SLACK_TOKEN}/#data-oncall"

A channel is an Apprise URL. ``${VAR}`` is read from the process environment,
then ``.env.ENV``, then ``.env`` (as secrets are); the resolved URLs, their
variables and passwords are secrets: they join the scrubber, and a channel is
only ever named by its route, its scheme and a short hash of the URL *as
written* (``route 0 json:3fa2b1c4``), never by the URL. The hash of the written
form does not change when the secret behind ``${VAR}`` is rotated.

Everything wrong with a route is a ``NotifyConfigError`` (exit 2) naming the
file, the route index and the key, and how to fix it; for a run, a ``${VAR}``
that is not set is not (see ``parse``): the run goes on, and that channel's
delivery is recorded as failed, naming the variable.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from stackbook.core.environments import Environment
from stackbook.core.errors import NotifyConfigError, SecretError
from stackbook.notify import events
from stackbook.run import scrub

ROUTE_KEYS = ("events", "runbooks", "channels")
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
DIGEST_LENGTH = 8


@dataclass(frozen=True)
class Channel:
    route: int
    index: int  # position in the route's channels
    scheme: str
    digest: str  # short hash of the URL as written
    url: str = field(repr=False)  # resolved: holds the secret, never printed, logged or stored ("": problem)
    variables: tuple[str, ...] = ()
    problem: str | None = None  # why it cannot be sent (a ${VAR} that is not set), outside strict parsing

    @property
    def label(self) -> str:
        """How a channel is named everywhere: its scheme and the hash, never its URL."""
        return f"{self.scheme}:{self.digest}"

    def secrets(self) -> dict[str, str]:
        """The values to scrub: the whole URL and the password inside it (variables come separately)."""
        name = f"NOTIFY_ROUTE{self.route}_CHANNEL{self.index}"
        if not self.url:
            return {}
        out = {name: self.url}
        try:
            password = urlsplit(self.url).password
        except ValueError:
            password = None
        if password:
            out[f"{name}_PASSWORD"] = password
        return out


@dataclass(frozen=True)
class Route:
    index: int
    events: tuple[str, ...]
    runbooks: tuple[str, ...]  # names or glob patterns; empty: every runbook
    channels: tuple[Channel, ...]
    variables: dict[str, str] = field(default_factory=dict, repr=False)  # ${VAR} values: secrets

    def matches(self, *subjects: str) -> bool:
        """Whether the route covers a runbook (or a pipeline, or any of several names)."""
        if not self.runbooks:
            return True
        return any(fnmatch.fnmatchcase(s, p) for s in subjects if s for p in self.runbooks)

    def first_wanted(self, candidates: list[str]) -> str | None:
        """The first of CANDIDATES (in order of preference) this route asks for."""
        return next((e for e in candidates if e in self.events), None)


def _file(env: Environment) -> str:
    return str(env.path) if env.path else f"{env.name}.yml"


def _where(env: Environment, index: int, key: str | None = None) -> str:
    return f"{_file(env)}: notify route {index}" + (f", key {key!r}" if key else "")


def _strings(env: Environment, index: int, key: str, value, *, required: bool) -> tuple[str, ...]:
    if value is None:
        if required:
            raise NotifyConfigError(f"{_where(env, index, key)} is missing: give a list"
                                    + (f" of events (any of {', '.join(events.names())})" if key == "events" else
                                       " of Apprise URLs"), env=env.name)
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise NotifyConfigError(f"{_where(env, index, key)} must be a list of non-empty strings", env=env.name)
    if required and not value:
        raise NotifyConfigError(f"{_where(env, index, key)} is empty: give at least one", env=env.name)
    return tuple(v.strip() for v in value)


def _check_keys(env: Environment, index: int, raw: dict) -> None:
    if True in raw or False in raw:
        raise NotifyConfigError(f"{_where(env, index)}: a key reads as a boolean (YAML reads `on:` as true): "
                                "write `events:`", env=env.name)
    unknown = sorted(str(k) for k in raw if k not in ROUTE_KEYS)
    if unknown:
        raise NotifyConfigError(f"{_where(env, index, unknown[0])}: unknown key (a route has "
                                f"{', '.join(ROUTE_KEYS)})", env=env.name)


def _check_events(env: Environment, index: int, names: tuple[str, ...]) -> None:
    unknown = [n for n in names if n not in events.EVENTS]
    if unknown:
        raise NotifyConfigError(f"{_where(env, index, 'events')}: unknown event {unknown[0]!r} "
                                f"(known: {', '.join(events.names())})", env=env.name)


def _unset(env: Environment, index: int, name: str) -> str:
    return (f"{_where(env, index, 'channels')}: ${{{name}}} is not set: set {name} in the environment or in "
            ".env (git-ignored), as for secrets")


def _resolve(env: Environment, index: int, written: list[str], strict: bool) -> tuple[list[tuple], dict]:
    """(written, resolved or None, variables, problem) per channel, and the variables' values.

    An unset variable is an error when STRICT; otherwise its channel carries the problem (and no URL).
    """
    wanted = sorted({v for text in written for v in VARIABLE.findall(text)})
    try:
        found = scrub.collect_optional(wanted, env.name) if wanted else {}
    except SecretError as exc:
        raise NotifyConfigError(f"{_where(env, index, 'channels')}: {exc}", env=env.name) from None
    missing = [v for v in wanted if v not in found]
    if missing and strict:
        raise NotifyConfigError(_unset(env, index, missing[0]), env=env.name)
    out = []
    for text in written:
        variables = tuple(VARIABLE.findall(text))
        unset = [v for v in variables if v not in found]
        if unset:
            out.append((text, None, variables, _unset(env, index, unset[0])))
            continue
        resolved = text
        for name in variables:
            resolved = resolved.replace("${" + name + "}", found[name])
        out.append((text, resolved, variables, None))
    return out, found


def _channels(env: Environment, index: int, written: tuple[str, ...],
              strict: bool) -> tuple[tuple[Channel, ...], dict]:
    resolved, values = _resolve(env, index, list(written), strict)
    channels = []
    for position, (text, url, variables, problem) in enumerate(resolved):
        match = SCHEME.match(url or text)
        if not match:
            raise NotifyConfigError(f"{_where(env, index, 'channels')}: channel {position} is not an Apprise URL "
                                    "(scheme://...), e.g. json://hooks.example.com/path or "
                                    "mailto://user:${SMTP_PASSWORD}@smtp.example.com", env=env.name)
        digest = hashlib.sha256(text.encode()).hexdigest()[:DIGEST_LENGTH]
        channels.append(Channel(route=index, index=position, scheme=match.group(1).lower(), digest=digest,
                                url=url or "", variables=variables, problem=problem))
    return tuple(channels), values


def _route(env: Environment, index: int, raw, strict: bool) -> Route:
    if not isinstance(raw, dict):
        raise NotifyConfigError(f"{_where(env, index)} must be a mapping with events, runbooks and channels",
                                env=env.name)
    _check_keys(env, index, raw)
    names = _strings(env, index, "events", raw.get("events"), required=True)
    _check_events(env, index, names)
    runbooks = _strings(env, index, "runbooks", raw.get("runbooks"), required=False)
    channels, values = _channels(env, index, _strings(env, index, "channels", raw.get("channels"), required=True),
                                 strict)
    return Route(index=index, events=names, runbooks=runbooks, channels=channels, variables=values)


def configured(env: Environment) -> bool:
    """Whether the environment has routes at all: the one check a run without routes pays."""
    return bool(env.data.get("notify"))


def parse(env: Environment, *, strict: bool = True) -> list[Route]:
    """The environment's routes, checked; ``[]`` when it has none.

    Not STRICT (a run): a channel whose ``${VAR}`` is not set is kept with its problem, so that the run goes
    on and the channel's delivery is recorded as failed, saying which variable to set; every other mistake
    is an error either way.
    """
    raw = env.data.get("notify")
    if not raw:
        return []
    if not isinstance(raw, list):
        raise NotifyConfigError(f"{_file(env)}: notify must be a list of routes "
                                "(- events: [...]\\n  channels: [...])", env=env.name)
    book_url = env.data.get("book_url")
    if book_url is not None and not (isinstance(book_url, str) and SCHEME.match(book_url)):
        raise NotifyConfigError(f"{_file(env)}: book_url must be a URL "
                                "(https://handbook.example.com)", env=env.name)
    return [_route(env, i, r, strict) for i, r in enumerate(raw)]


def secrets(routes: list[Route]) -> dict[str, str]:
    """Every secret the routes hold, by name, for the scrubber."""
    out: dict[str, str] = {}
    for route in routes:
        out.update(route.variables)
        for channel in route.channels:
            out.update(channel.secrets())
    return out
