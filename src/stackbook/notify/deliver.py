"""Delivery through Apprise: a short timeout, bounded retries, one result per channel.

stackbook has no HTTP or SMTP client of its own: every channel is an Apprise URL
sent by Apprise (``apprise==2.3``, whose ``notify`` returns a structured result:
each attempt of each service with the log lines it produced). Per channel:

* the plugin is the one registered for its scheme (:mod:`.channels`), imported
  alone; other schemes go through Apprise's own discovery;
* the socket connect and read timeouts are ``CONNECT_TIMEOUT_S`` and
  ``READ_TIMEOUT_S`` unless the URL sets ``cto=`` / ``rto=``; a failed attempt is
  retried ``RETRIES`` times ``RETRY_WAIT_S`` apart (unless the URL sets
  ``retry=`` / ``wait=``), and the caller waits at most ``CALL_TIMEOUT_S`` for
  all channels together (a channel still sending then is recorded failed);
* the result is a ``Delivery``: ``sent``, or ``failed`` with the last warning
  Apprise logged, scrubbed. Apprise's logger does not propagate to the
  process's handlers: its lines could name a host or a token, and a delivery
  failure must not print anything the scrubber has not seen.

Every channel is sent from a daemon thread of its own (Apprise itself sends
synchronously in it), so channels go out in parallel and a hung service can
neither hold the run past ``CALL_TIMEOUT_S`` nor keep the process from exiting;
each thread sets its own ``Delivery`` (no shared state).
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from stackbook.notify import channels as channel_kinds
from stackbook.notify.message import Message
from stackbook.notify.routes import Channel
from stackbook.run import scrub

CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 5.0
RETRIES = 2  # attempts after the first
RETRY_WAIT_S = 0.5
CALL_TIMEOUT_S = 20.0
MAX_ERROR_CHARS = 300

_quiet = False


@dataclass(frozen=True)
class Delivery:
    route: int
    channel: str  # the label: scheme and hash, never the URL
    event: str
    status: str  # "sent" or "failed"
    error: str | None = None
    attempts: int = 0
    elapsed_s: float = 0.0

    @property
    def sent(self) -> bool:
        return self.status == "sent"

    def to_json(self) -> dict[str, Any]:
        return {"route": self.route, "channel": self.channel, "event": self.event, "status": self.status,
                "error": self.error, "attempts": self.attempts, "elapsed_s": round(self.elapsed_s, 3)}


def _apprise():
    """Apprise, imported on first use, its logger kept out of the process's handlers."""
    global _quiet
    import apprise

    if not _quiet:
        logging.getLogger("apprise").propagate = False
        _quiet = True
    return apprise


def _asset(apprise):
    # async_mode off and no service timeout: Apprise sends in the calling thread (one of ours, a daemon, see
    # send_all) instead of its shared pool, whose worker threads would outlive the send and hold the exit
    return apprise.AppriseAsset(storage_mode="memory", default_service_retry=RETRIES,
                                default_service_wait=RETRY_WAIT_S, async_mode=False, service_timeout=0)


def _plugin(apprise, asset, channel: Channel):
    """The Apprise service object of CHANNEL, or None when Apprise cannot read its URL."""
    kind = channel_kinds.kind(channel.scheme)
    if kind is None:
        return apprise.Apprise.instantiate(channel.url, asset=asset)
    cls = getattr(importlib.import_module(kind.module), kind.cls)
    parsed = cls.parse_url(channel.url)
    if not parsed:
        return None
    parsed["asset"] = asset
    return cls(**parsed)


def _with_timeouts(plugin, url: str) -> None:
    query = url.partition("?")[2]
    if "cto=" not in query:
        plugin.socket_connect_timeout = CONNECT_TIMEOUT_S
    if "rto=" not in query:
        plugin.socket_read_timeout = READ_TIMEOUT_S


def _last_problem(result) -> str | None:
    lines = [entry.message for entry in result.logs() if entry.level in ("WARNING", "ERROR", "CRITICAL")]
    lines = [line for line in lines if not line.startswith("Attempt ")]  # "Attempt 1/3 failed; trying again"
    return lines[-1] if lines else None


def _failed(channel: Channel, event: str, error: str, scrubber: scrub.Scrubber, attempts: int,
            t0: float) -> Delivery:
    text = scrubber.text(" ".join(str(error).split()))[:MAX_ERROR_CHARS]
    return Delivery(route=channel.route, channel=channel.label, event=event, status="failed", error=text,
                    attempts=attempts, elapsed_s=time.monotonic() - t0)


def _notify(channel: Channel, message: Message):
    """Apprise's result for one channel, or a string saying why it could not be tried."""
    apprise = _apprise()
    asset = _asset(apprise)
    plugin = _plugin(apprise, asset, channel)
    if plugin is None:
        return (f"Apprise cannot read this {channel.scheme}:// URL: check it against the Apprise documentation "
                "of the service")
    _with_timeouts(plugin, channel.url)
    sender = apprise.Apprise(asset=asset)
    sender.add(plugin)
    # plain text: services that want HTML get it escaped, line breaks kept
    return sender.notify(body=message.body, title=message.title, notify_type=message.kind, body_format="text")


def send(channel: Channel, message: Message, scrubber: scrub.Scrubber) -> Delivery:
    """Deliver MESSAGE to CHANNEL; never raises, the outcome is the ``Delivery``."""
    t0 = time.monotonic()
    if channel.problem:
        return _failed(channel, message.event, channel.problem, scrubber, 0, t0)
    try:
        result = _notify(channel, message)
    except (ImportError, OSError, TypeError, ValueError, AttributeError) as exc:  # Apprise's configuration errors
        return _failed(channel, message.event, f"Apprise cannot use this {channel.scheme}:// URL: "
                       f"{type(exc).__name__}: {exc}", scrubber, 0, t0)
    if isinstance(result, str):
        return _failed(channel, message.event, result, scrubber, 0, t0)
    attempts = sum(len(service) for service in result)
    if result:
        return Delivery(route=channel.route, channel=channel.label, event=message.event, status="sent",
                        attempts=attempts, elapsed_s=time.monotonic() - t0)
    problem = _last_problem(result) or f"Apprise reported {result.status.name.lower()}"
    return _failed(channel, message.event, problem, scrubber, attempts, t0)


class _Sending(threading.Thread):
    """One channel's delivery in a daemon thread: a service that hangs holds neither the run nor its exit."""

    def __init__(self, channel: Channel, message: Message, scrubber: scrub.Scrubber):
        super().__init__(name=f"notify-{channel.label}", daemon=True)
        self.channel, self.message, self.scrubber = channel, message, scrubber
        self.delivery: Delivery | None = None  # set once, by this thread, when it is done

    def run(self) -> None:
        self.delivery = send(self.channel, self.message, self.scrubber)

    def outcome(self, t0: float) -> Delivery:
        if self.delivery is not None:
            return self.delivery
        return _failed(self.channel, self.message.event, f"no answer within {CALL_TIMEOUT_S:g} s (left behind)",
                       self.scrubber, 0, t0)


def start(pairs: list[tuple[Channel, Message]], scrubber: scrub.Scrubber) -> list[_Sending]:
    """Every (channel, message) on its way, each in its own thread; ``finish`` waits for them."""
    sending = [_Sending(c, m, scrubber) for c, m in pairs]
    for thread in sending:
        thread.start()
    return sending


def finish(sending: list[_Sending], t0: float) -> list[Delivery]:
    """The deliveries of START's threads, in order, waiting at most until T0 + CALL_TIMEOUT_S."""
    for thread in sending:
        thread.join(max(0.0, t0 + CALL_TIMEOUT_S - time.monotonic()))
    return [thread.outcome(t0) for thread in sending]


def send_all(pairs: list[tuple[Channel, Message]], scrubber: scrub.Scrubber) -> list[Delivery]:
    """Every (channel, message) at once, all within CALL_TIMEOUT_S; the deliveries in the same order."""
    t0 = time.monotonic()
    return finish(start(pairs, scrubber), t0)
