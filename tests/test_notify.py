"""Notifications: routes, messages, delivery to real local servers, `check`, `notify test`, alerting rules.

Nothing is mocked. A local SMTP server (aiosmtpd) and a local HTTP webhook receiver run on 127.0.0.1 on
free ports, started and stopped by fixtures; Apprise delivers to them as it would to Slack or a mail relay.
Runs go through the real CLI, kernels and PostgreSQL. Each test writes an environment file of its own
(``infra/environments/t_notify_<hex>.yml``) and removes it afterwards with its ledger rows, notifications,
episodes and run store. The alerting rules are checked by promtool (``infra/scripts/system-deps.sh``
installs it) against series built from a real ``/metrics`` scrape.
"""

from __future__ import annotations

import email
import email.policy
import json
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from stackbook.core import project
from stackbook.core.environments import Environment
from stackbook.core.errors import NotifyConfigError
from stackbook.run import scrub
from tests.conftest import ROOT, STACKBOOK

FAIL = str(ROOT / "tests" / "fixtures" / "runbooks" / "pipe_fail.ipynb")  # `-p fail=false` succeeds
FLAKY = str(ROOT / "tests" / "fixtures" / "runbooks" / "pipe_flaky.ipynb")
STEP = str(ROOT / "tests" / "fixtures" / "runbooks" / "pipe_step.ipynb")
LEAKS = str(ROOT / "tests" / "fixtures" / "notify" / "leaks_channel.ipynb")
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: run infra/scripts/system-deps.sh")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- a webhook receiver and an SMTP server


@dataclass(frozen=True)
class Hook:
    path: str
    body: dict


class _HookHandler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's name
        length = int(self.headers.get("content-length") or 0)
        self.server.received.append(Hook(self.path, json.loads(self.rfile.read(length) or b"{}")))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):  # quiet
        pass


class Webhook(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _HookHandler)
        self.received: list[Hook] = []  # list.append is atomic: handler threads only append

    def url(self, path: str) -> str:
        return f"json://127.0.0.1:{self.server_address[1]}/{path}"

    def at(self, path: str) -> list[dict]:
        return [h.body for h in self.received if h.path == f"/{path}"]


class Mailbox:
    """aiosmtpd's handler: every message it accepts, parsed."""

    def __init__(self):
        self.messages: list[email.message.EmailMessage] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 OK"


@dataclass
class Smtp:
    port: int
    password: str
    mailbox: Mailbox

    def url(self, password: str | None = None) -> str:
        return (f"mailto://oncall:{password or self.password}@127.0.0.1:{self.port}"
                "?from=stackbook@example.com&to=oncall@example.com&mode=insecure")

    @property
    def messages(self):
        return self.mailbox.messages


class _Authenticator:
    def __init__(self, password: str):
        self.password = password.encode()

    def __call__(self, server, session, envelope, mechanism, auth_data):
        from aiosmtpd.smtp import AuthResult, LoginPassword

        return AuthResult(success=isinstance(auth_data, LoginPassword) and auth_data.password == self.password)


@pytest.fixture()
def webhook():
    server = Webhook()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture()
def smtp():
    from aiosmtpd.controller import Controller

    password = "smtp-" + secrets.token_urlsafe(12)
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, authenticator=_Authenticator(password),
                            auth_require_tls=False)
    controller.start()
    yield Smtp(port=port, password=password, mailbox=mailbox)
    controller.stop()


def body_of(mail) -> str:
    return mail.get_body(preferencelist=("plain",)).get_content()


# ---------------------------------------------------------------- a scratch environment


class ScratchEnv:
    def __init__(self, db):
        self.db = db
        self.name = f"t_notify_{uuid.uuid4().hex[:8]}"
        self.path = project.environments_dir() / f"{self.name}.yml"

    def write(self, routes, **extra) -> None:
        doc = {"description": "notification tests", "params": {}, "runbooks": {}, **extra, "notify": routes}
        self.path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))

    def add_run(self, runbook: str, status: str, hours_ago: float, **extra) -> str:
        """A ledger row as a finished (or, with status running, live) run would leave it."""
        from stackbook.run import ledger

        ledger.ensure_schema(self.db)
        run_id = f"{self.name}-{uuid.uuid4().hex[:6]}"
        started = datetime.now(UTC) - timedelta(hours=hours_ago)
        finished = None if status == "running" else started + timedelta(seconds=3)
        self.db.execute(
            """insert into stackbook.runs (id, runbook, env, status, started_at, finished_at, duration_s, host,
                                           heartbeat_at, error)
               values (%s, %s, %s, %s, %s, %s, %s, %s, now(), %s)""",
            (run_id, runbook, self.name, status, started, finished, None if finished is None else 3.0,
             extra.get("host", "elsewhere"), json.dumps(extra["error"]) if "error" in extra else None))
        return run_id

    def notifications(self) -> list[dict]:
        from psycopg.rows import dict_row

        with self.db.cursor(row_factory=dict_row) as cur:
            return cur.execute("select * from stackbook.notifications where env = %s order by id",
                               (self.name,)).fetchall()

    def cleanup(self) -> None:
        self.path.unlink(missing_ok=True)
        for table in ("runs", "notifications", "notify_episodes"):
            if self.db.execute(f"select to_regclass('stackbook.{table}') is not null").fetchone()[0]:
                self.db.execute(f"delete from stackbook.{table} where env = %s", (self.name,))
        shutil.rmtree(project.state_dir() / "runs" / self.name, ignore_errors=True)


@pytest.fixture()
def scratch(db):
    env = ScratchEnv(db)
    yield env
    env.cleanup()


def env_of(name: str, data: dict) -> Environment:
    return Environment(name=name, path=Path(f"/nowhere/{name}.yml"), data=data)


# ---------------------------------------------------------------- routes (no database, no server)


@pytest.mark.parametrize("route, where, says", [
    ({"events": ["failure"], "channels": ["json://h/x"]}, "notify route 0, key 'events'", "unknown event 'failure'"),
    ({"events": ["failed"]}, "notify route 0, key 'channels'", "is missing"),
    ({"events": ["failed"], "channels": []}, "notify route 0, key 'channels'", "is empty"),
    ({"channels": ["json://h/x"]}, "notify route 0, key 'events'", "is missing"),
    ({True: ["failed"], "channels": ["json://h/x"]}, "notify route 0", "YAML reads `on:` as true"),
    ({"events": ["failed"], "channels": ["json://h/x"], "when": "always"}, "notify route 0, key 'when'",
     "unknown key"),
    ({"events": ["failed"], "channels": ["json://h/${NOTIFY_TEST_UNSET_VAR}"]}, "notify route 0, key 'channels'",
     "${NOTIFY_TEST_UNSET_VAR} is not set"),
    ({"events": ["failed"], "channels": ["hooks.example.com/secret-path"]}, "notify route 0, key 'channels'",
     "channel 0 is not an Apprise URL"),
    ({"events": ["failed"], "runbooks": [3], "channels": ["json://h/x"]}, "notify route 0, key 'runbooks'",
     "list of non-empty strings"),
])
def test_a_wrong_route_is_a_usage_error_naming_route_and_key(route, where, says, monkeypatch):
    from stackbook.notify import routes

    monkeypatch.delenv("NOTIFY_TEST_UNSET_VAR", raising=False)
    good = {"events": ["stale"], "channels": ["json://h/ok"]}
    with pytest.raises(NotifyConfigError) as err:
        routes.parse(env_of("t_bad", {"notify": [route] if "route 0" in where else [good, route]}))
    message = str(err.value)
    assert where in message and says in message, message
    assert err.value.exit_code == 2
    assert "secret-path" not in message and "h/x" not in message  # a channel is never quoted


def test_route_errors_name_the_index_of_the_route():
    from stackbook.notify import routes

    with pytest.raises(NotifyConfigError) as err:
        routes.parse(env_of("t_bad", {"notify": [{"events": ["failed"], "channels": ["json://a/b"]},
                                                 {"events": ["failed", "nope"], "channels": ["json://a/b"]}]}))
    assert "notify route 1, key 'events': unknown event 'nope'" in str(err.value)
    for data in ({"notify": {"events": ["failed"]}}, {"notify": ["failed"]},
                 {"notify": [{"events": ["failed"], "channels": ["json://a/b"]}], "book_url": "handbook"}):
        with pytest.raises(NotifyConfigError):
            routes.parse(env_of("t_bad", data))


def test_channels_are_named_by_scheme_and_hash_and_their_secrets_are_scrubbed(monkeypatch):
    from stackbook.notify import routes

    token = "tok-" + secrets.token_urlsafe(16)
    monkeypatch.setenv("NOTIFY_TEST_TOKEN", token)
    written = "json://hooks.example.com/x/${NOTIFY_TEST_TOKEN}"
    [route] = routes.parse(env_of("t_ok", {"notify": [
        {"events": "failed", "runbooks": ["load_*"], "channels": [written, "mailto://u:pw-1234@smtp.example.com"]}]}))
    hook, mail = route.channels
    assert hook.url == f"json://hooks.example.com/x/{token}" and hook.variables == ("NOTIFY_TEST_TOKEN",)
    assert re.fullmatch(r"json:[0-9a-f]{8}", hook.label) and mail.label.startswith("mailto:")
    assert token not in repr(route) and "pw-1234" not in repr(route)  # the resolved URL is not in any repr
    found = routes.secrets([route])
    assert found["NOTIFY_TEST_TOKEN"] == token and "pw-1234" in found.values()
    text = scrub.Scrubber(found).text(f"posting to {hook.url} as u:pw-1234")
    assert token not in text and "pw-1234" not in text
    assert route.matches("load_jaffle_shop") and not route.matches("build_warehouse")
    assert route.first_wanted(["recovered", "failed"]) == "failed"
    monkeypatch.setenv("NOTIFY_TEST_TOKEN", "rotated-" + token)  # the label is the written URL's: it stays
    assert routes.parse(env_of("t_ok", {"notify": [{"events": ["failed"], "channels": [written]}]}))[0] \
        .channels[0].label == hook.label


def test_every_registered_channel_kind_is_an_apprise_plugin_that_claims_its_schemes():
    import importlib

    from stackbook.notify import channels

    assert {"json", "mailto", "slack", "pagerduty", "opsgenie", "workflow"} <= set(channels.KINDS)
    for scheme, kind in channels.KINDS.items():
        cls = getattr(importlib.import_module(kind.module), kind.cls)
        claimed = {p for attr in ("protocol", "secure_protocol")
                   for p in ([getattr(cls, attr)] if isinstance(getattr(cls, attr), str) else getattr(cls, attr) or [])}
        assert scheme in claimed, (scheme, kind.plugin, claimed)


def test_events_prefer_recovered_over_succeeded_and_need_a_failure_before():
    from stackbook.notify import events
    from stackbook.notify.events import RunView

    ok = RunView.of({"id": "b", "runbook": "r", "env": "e", "status": "succeeded"})
    failed = RunView.of({"id": "a", "runbook": "r", "env": "e", "status": "timed_out"})
    assert events.of_run(ok, failed) == ["recovered", "succeeded"]
    assert events.of_run(ok, ok) == ["succeeded"] and events.of_run(ok, None) == ["succeeded"]
    assert events.of_run(failed, ok) == ["timed_out"]
    assert events.EVENTS["stale"].source == "check" and "stale" not in events.TRIGGERS


def test_message_of_a_failed_run_says_what_on_call_needs_first(tmp_path):
    from stackbook.notify import message
    from stackbook.notify.events import RunView

    run = RunView.of({"id": "20260101T000000-abcdef", "runbook": "pipe_fail", "env": "prod", "status": "failed",
                      "duration_s": 75.2, "path": FAIL, "output": str(tmp_path / "missing.ipynb"),
                      "approved_by": "alice", "host": "runner-1",
                      # cell_index as the executed notebook stores it: papermill's two error markers precede the cell
                      "error": {"cell_index": 6, "ename": "AssertionError", "evalue": "failing on purpose"}})
    env = env_of("prod", {"book_url": "https://handbook.example.com/"})
    msg = message.for_run("failed", run, env)
    assert msg.title == "✖ pipe_fail failed on prod" and msg.kind == "failure"
    lines = dict(line.split(":", 1) for line in msg.body.splitlines())
    assert {k: v.strip() for k, v in lines.items()} == {
        "runbook": "pipe_fail", "environment": "prod", "status": "failed at cell 6",
        "operator": lines["operator"].strip(), "duration": "1 min 15 s",
        "failing cell": '6: assert not fail, "failing on purpose"',  # from the source: the notebook is gone
        "error": "AssertionError: failing on purpose", "run": run.id, "notebook": run.output,
    }
    assert lines["operator"].strip().endswith("@runner-1 (approved by alice)")
    page = message.page_url(env, str(ROOT / "runbooks" / "ops" / "platform_check.ipynb"))
    assert page == "https://handbook.example.com/runbooks/ops/platform_check.html"
    assert message.page_url(env, FAIL) is None  # not a runbook of the book


def test_without_routes_a_run_pays_nothing(tmp_path):
    """No routes: `after_run` reads one key and returns; neither Apprise nor psycopg is imported for it."""
    code = (
        "import sys, time\n"
        "from stackbook.core.environments import Environment\n"
        "t0 = time.perf_counter()\n"
        "from stackbook import notify\n"
        "env = Environment(name='x', path=None, data={'params': {}})\n"
        "out = notify.after_run({'id': 'r', 'runbook': 'a', 'env': 'x', 'status': 'failed'}, env)\n"
        "took = time.perf_counter() - t0\n"
        "print(out, [m for m in ('apprise', 'psycopg') if m in sys.modules], took < 0.5)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.stdout.strip() == "[] [] True", done


# ---------------------------------------------------------------- runs: messages, recovery, a server that is down


def fields_of(body: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in body.splitlines())}


def test_a_failed_run_sends_exactly_one_message_to_each_routed_channel(cli, scratch, webhook, smtp):
    scratch.write([
        {"events": ["failed", "timed_out"], "runbooks": ["pipe_*"], "channels": [webhook.url("oncall"), smtp.url()]},
        {"events": ["failed", "succeeded"], "runbooks": ["load_*", "build_warehouse"],
         "channels": [webhook.url("others")]},
    ], book_url="https://handbook.example.com")
    res = cli("run", FAIL, "-e", scratch.name, "--json")
    assert res.code == 1, res
    rec = res.json()
    assert rec["status"] == "failed"
    [hook] = webhook.at("oncall")
    [mail] = smtp.messages
    assert webhook.at("others") == []  # a route for other runbooks sends nothing
    title = f"✖ pipe_fail failed on {scratch.name}"
    assert hook["title"] == title and mail["subject"] == title
    for body in (hook["message"], body_of(mail)):
        got = fields_of(body)
        assert got["runbook"] == "pipe_fail" and got["environment"] == scratch.name
        assert got["status"] == f"failed at cell {rec['error']['cell_index']}"
        assert got["failing cell"] == f'{rec["error"]["cell_index"]}: assert not fail, "failing on purpose"'
        assert got["error"] == "AssertionError: failing on purpose"
        assert got["run"] == rec["id"] and got["notebook"] == rec["output"]
        assert re.fullmatch(r"\S+@\S+", got["operator"]) and re.fullmatch(r"[\d.]+ s", got["duration"])
    show = cli("runs", "show", rec["id"], "--json").json()
    assert [(n["route"], n["event"], n["status"]) for n in show["notifications"]] == [(0, "failed", "sent")] * 2
    assert sorted(n["channel"].split(":")[0] for n in show["notifications"]) == ["json", "mailto"]
    text = cli("runs", "show", rec["id"])
    assert text.code == 0 and "notified (failed): route 0 json:" in text.out
    assert "127.0.0.1" not in text.out + show.__repr__()  # channels are named, never shown


def test_a_success_after_a_failure_sends_recovered_naming_the_failure(cli, scratch, webhook):
    scratch.write([{"events": ["failed", "recovered"], "channels": [webhook.url("r")]}])
    failed = cli("run", FAIL, "-e", scratch.name, "--json")
    ok = cli("run", FAIL, "-e", scratch.name, "-p", "fail=false", "--json")
    again = cli("run", FAIL, "-e", scratch.name, "-p", "fail=false", "--json")
    assert (failed.code, ok.code, again.code) == (1, 0, 0), (failed, ok, again)
    messages = webhook.at("r")
    assert [m["title"] for m in messages] == [f"✖ pipe_fail failed on {scratch.name}",
                                             f"✔ pipe_fail recovered on {scratch.name}"]
    ends = fields_of(messages[1]["message"])["ends"]
    assert ends.startswith("1 failed run since ") and f"the last: run {failed.json()['id']} failed at cell" in ends
    assert "AssertionError: failing on purpose" in ends


def test_a_channel_whose_server_is_down_leaves_status_and_exit_code_and_the_error_on_the_row(cli, scratch):
    scratch.write([{"events": ["failed", "succeeded"], "channels": [f"json://127.0.0.1:{free_port()}/down"]}])
    ok = cli("run", FAIL, "-e", scratch.name, "-p", "fail=false", "--json")
    bad = cli("run", FAIL, "-e", scratch.name, "--json")
    assert ok.code == 0 and ok.json()["status"] == "succeeded", ok
    assert bad.code == 1 and bad.json()["status"] == "failed", bad
    for res, event in ((ok, "succeeded"), (bad, "failed")):
        [row] = cli("runs", "show", res.json()["id"], "--json").json()["notifications"]
        assert (row["event"], row["status"], row["attempts"]) == (event, "failed", 3)
        assert "Connection error" in row["error"]
        assert "failed after 3 attempt(s)" in res.err and "the run is unaffected" in res.err
        assert json.loads(res.out)["id"] == res.json()["id"]  # stdout is still only the run's JSON
    assert [r["status"] for r in scratch.notifications()] == ["failed", "failed"]


def test_an_unset_channel_variable_does_not_stop_a_run_but_stops_check_and_notify_test(cli, scratch, webhook,
                                                                                         monkeypatch):
    monkeypatch.delenv("NOTIFY_TEST_NOT_SET", raising=False)
    scratch.write([{"events": ["failed"],
                    "channels": [webhook.url("ok"), "json://hooks.example.com/${NOTIFY_TEST_NOT_SET}"]}])
    res = cli("run", FAIL, "-e", scratch.name, "--json")
    assert res.code == 1 and res.json()["status"] == "failed", res  # the run ran, and failed on its own
    assert "${NOTIFY_TEST_NOT_SET} is not set" in res.err and "recorded as failed" in res.err
    assert len(webhook.at("ok")) == 1  # the other channel of the route got its message
    shown = cli("runs", "show", res.json()["id"], "--json").json()["notifications"]
    assert sorted((n["route"], n["status"]) for n in shown) == [(0, "failed"), (0, "sent")]
    [failed] = [n for n in shown if n["status"] == "failed"]
    assert "notify route 0, key 'channels': ${NOTIFY_TEST_NOT_SET} is not set" in failed["error"]
    for args in (("check", "-e", scratch.name), ("notify", "test", "-e", scratch.name)):
        strict = cli(*args)
        assert strict.code == 2 and "${NOTIFY_TEST_NOT_SET} is not set" in strict.err, strict


def test_a_cancelled_run_is_told_to_the_routes_that_ask_for_it(scratch, webhook, db):
    scratch.write([{"events": ["cancelled"], "channels": [webhook.url("c")]}])
    sleeps = str(ROOT / "tests" / "fixtures" / "foundation" / "sleeps.ipynb")
    proc = subprocess.Popen([STACKBOOK, "run", sleeps, "-e", scratch.name, "-p", "seconds=120"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not db.execute("select 1 from stackbook.runs where env = %s and status = 'running' and kernel_pid > 0",
                         (scratch.name,)).fetchone():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    [message] = webhook.at("c")
    assert message["title"] == f"■ sleeps was cancelled on {scratch.name}"
    assert fields_of(message["message"])["status"].startswith("cancelled")


def test_a_wrong_route_stops_the_run_before_anything_is_recorded(cli, scratch, db):
    scratch.write([{"events": ["failed", "explode"], "channels": ["json://127.0.0.1:1/x"]}])
    res = cli("run", FAIL, "-e", scratch.name)
    assert res.code == 2, res
    assert f"{scratch.name}.yml: notify route 0, key 'events': unknown event 'explode'" in res.err
    assert db.execute("select count(*) from stackbook.runs where env = %s", (scratch.name,)).fetchone()[0] == 0
    for args in (("check", "-e", scratch.name), ("notify", "test", "-e", scratch.name)):
        other = cli(*args)
        assert other.code == 2 and "unknown event 'explode'" in other.err, other


# ---------------------------------------------------------------- pipelines: one message per failed task, one summary


def test_a_pipeline_sends_one_message_per_failed_task_and_one_summary(cli, scratch, webhook, tmp_path):
    folder = tmp_path / f"notify{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    (folder / "pipeline.yaml").write_text(yaml.safe_dump({"tasks": [
        {"source": FAIL, "name": "breaks", "product": "breaks.ipynb"},
        {"source": STEP, "name": "after", "upstream": ["breaks"], "product": "after.ipynb"},
        {"source": STEP, "name": "after_after", "upstream": ["after"], "product": "after_after.ipynb"},
        {"source": FLAKY, "name": "gives_up", "product": "gives_up.ipynb",  # retries: 2 (three attempts)
         "params": {"counter_file": str(tmp_path / "gives_up.count"), "succeed_on": 99}},
        {"source": STEP, "name": "aside", "product": "aside.ipynb"},
    ]}, sort_keys=False))
    scratch.write([{"events": ["failed"], "channels": [webhook.url("p")]}])
    res = cli("pipeline", "run", str(folder / "pipeline.yaml"), "-e", scratch.name, "--json")
    assert res.code == 1, res
    summary = res.json()
    assert sorted(summary["failed"]) == ["breaks", "gives_up"] and len(summary["upstream_failed"]) == 2
    titles = sorted(m["title"] for m in webhook.at("p"))
    assert titles == sorted([f"✖ pipe_fail failed on {scratch.name}", f"✖ pipe_flaky failed on {scratch.name}",
                             f"✖ pipeline {summary['pipeline']} failed on {scratch.name}"])
    [digest] = [m for m in webhook.at("p") if m["title"].startswith("✖ pipeline")]
    got = fields_of(digest["message"])
    assert "breaks (failed" in got["failed tasks"] and "gives_up (failed" in got["failed tasks"]
    assert got["not run"] == "after, after_after" and got["pipeline run"] == summary["pipeline_run_id"]
    flaky = fields_of(next(m["message"] for m in webhook.at("p") if "pipe_flaky" in m["title"]))
    assert flaky["run"] == {t["name"]: t for t in summary["tasks"]}["gives_up"]["run_id"]  # the last attempt


# ---------------------------------------------------------------- stackbook check: once per episode


def test_check_sends_stale_once_across_three_calls_and_again_after_a_recovery(cli, scratch, webhook, db):
    scratch.write([{"events": ["stale"], "runbooks": ["platform_check"], "channels": [webhook.url("stale")]}])
    scratch.add_run("platform_check", "succeeded", hours_ago=5)  # its window: 2 h (twice its 30-minute schedule)
    checks = [cli("check", "-e", scratch.name, "--json") for _ in range(3)]
    assert [c.code for c in checks] == [1, 1, 1], checks
    [message] = webhook.at("stale")
    assert message["title"] == f"⚠ platform_check stale on {scratch.name}"
    got = fields_of(message["message"])
    assert got["state"] == "no success within its freshness window of 2 h (last success 4 h 59 min ago)"
    assert got["found by"].startswith("stackbook check on ")
    first, second = ({r["runbook"]: r for r in c.json()["runbooks"]} for c in checks[:2])
    assert first["platform_check"]["state"] == "stale" and first["platform_check"]["window_hours"] == 2
    assert [n["status"] for n in first["platform_check"]["notified"]] == ["sent"]
    assert second["platform_check"]["notified"] == [] and second["platform_check"]["episode_since"]
    assert first["load_csv_folder"]["state"] == "on demand"  # never run, no window: not watched
    assert first["dr_drill"]["state"] == "stale" and first["dr_drill"]["notified"] == []  # not routed
    fresh = scratch.add_run("platform_check", "succeeded", hours_ago=0.1)
    ok = cli("check", "-e", scratch.name, "--runbook", "platform_check", "--json")
    assert ok.code == 0 and ok.json()["healthy"] is True, ok
    db.execute("delete from stackbook.runs where id = %s", (fresh,))  # stale again: a new episode
    again = cli("check", "-e", scratch.name, "--runbook", "platform_*")
    assert again.code == 1 and "platform_check" in again.err, again
    assert len(webhook.at("stale")) == 2


def test_check_tells_a_failure_the_runner_could_not(cli, scratch, webhook):
    """A runner that died never notified: its reaped row is failing, and check says so once."""
    scratch.write([{"events": ["failed"], "runbooks": ["platform_check"], "channels": [webhook.url("f")]}])
    run_id = scratch.add_run("platform_check", "failed", hours_ago=0.2,
                             error={"cell_index": None, "ename": "StaleRun", "evalue": "no heartbeat for 61 s"})
    first, second = cli("check", "-e", scratch.name, "--json"), cli("check", "-e", scratch.name, "--json")
    assert first.code == second.code == 1
    [message] = webhook.at("f")
    assert message["title"] == f"⚠ platform_check failing on {scratch.name}"
    got = fields_of(message["message"])
    assert got["latest run"].startswith(f"run {run_id} failed at ")
    assert got["error"] == "StaleRun: no heartbeat for 61 s"


# ---------------------------------------------------------------- stackbook notify test


def test_notify_test_reports_each_channel_and_exits_1_when_one_is_not_delivered(cli, scratch, webhook):
    down = f"json://127.0.0.1:{free_port()}/x"
    scratch.write([{"events": ["failed"], "channels": [webhook.url("t")]},
                   {"events": ["stale"], "runbooks": ["dr_*"], "channels": [down]}])
    res = cli("notify", "test", "-e", scratch.name, "--json")
    assert res.code == 1, res
    doc = json.loads(res.out)  # stdout: only the JSON document
    assert doc["delivered"] is False
    assert [(c["route"], c["status"]) for c in doc["channels"]] == [(0, "sent"), (1, "failed")]
    assert webhook.url("t") not in res.out and down not in res.out and down.split("//")[1] not in res.out
    assert "Connection error" in doc["channels"][1]["error"]  # Apprise's words (it names the host, not the URL)
    [message] = webhook.at("t")
    assert message["title"] == f"ℹ stackbook test message for {scratch.name}"
    assert fields_of(message["message"])["route"] == "0 (events: failed; runbooks: all)"
    one = cli("notify", "test", "-e", scratch.name, "--route", "0")
    assert one.code == 0 and "sent" in one.out, one
    assert len(webhook.at("t")) == 2 and scratch.notifications() == []  # tests are about no run: not recorded
    missing = cli("notify", "test", "-e", scratch.name, "--route", "7")
    assert missing.code == 2 and "no notify route 7: it has 2 (0 to 1)" in missing.err
    scratch.write([])
    none = cli("notify", "test", "-e", scratch.name, "--json")
    assert none.code == 2 and "has no notify routes" in none.json()["error"]


# ---------------------------------------------------------------- the secret canary


def leaks(text: str, value: str) -> list[str]:
    return sorted(f for f in scrub.forms(value) if f in text)


def test_secret_canary_reaches_no_message_log_row_store_or_page(cli, scratch, webhook, smtp, db, tmp_path):
    """The declared secret and the secrets of the channel URLs (a webhook token, an SMTP password) appear in no
    message, no log, no ledger or notification row, no run store file, no page of the book."""
    canary = "canary/" + secrets.token_urlsafe(18) + "+@="
    hook_token = "hook-" + secrets.token_urlsafe(18)
    scratch.write([{"events": ["failed"], "channels": [webhook.url("h/${NOTIFY_CANARY_HOOK}"),
                                                      smtp.url("${NOTIFY_CANARY_SMTP}")]}],
                  kernel_env=["NOTIFY_CANARY_HOOK"])  # the runbook sees the hook's token: it tries to leak it
    secret_env = {"CANARY_SECRET": canary, "NOTIFY_CANARY_HOOK": hook_token, "NOTIFY_CANARY_SMTP": smtp.password}
    res = cli("run", LEAKS, "-e", scratch.name, "--log-output", "--json", env=secret_env)
    assert res.code == 1, res
    rec = res.json()
    [hook] = webhook.received
    [mail] = smtp.messages
    assert hook.path == f"/h/{hook_token}"  # the channel works: its secret reached the service, and only there
    book = cli("book", "-e", scratch.name, "--runbook", LEAKS, "--src", str(tmp_path / "src"),
               "--out", str(tmp_path / "out"), "--json")
    assert book.code == 0, book
    from psycopg.rows import dict_row

    with db.cursor(row_factory=dict_row) as cur:
        rows = json.dumps(cur.execute("select * from stackbook.runs where env = %s", (scratch.name,)).fetchall(),
                          default=str)
    texts = {
        "webhook message": json.dumps(hook.body, ensure_ascii=False), "email": mail.as_string(),
        "run output and logs": res.out + res.err, "ledger rows": rows,
        "notification rows": json.dumps(scratch.notifications(), default=str),
        "run store": "\n".join(p.read_text(errors="replace") for p in
                               (project.state_dir() / "runs" / scratch.name).rglob("*") if p.is_file()),
        "book pages": "\n".join(p.read_text(errors="replace") for p in tmp_path.rglob("*")
                                if p.is_file() and p.suffix in (".html", ".ipynb", ".md", ".txt", ".json")),
    }
    assert all(texts.values())
    for name, value in secret_env.items():
        found = {where: leaks(text, value) for where, text in texts.items() if leaks(text, value)}
        assert found == {}, f"{name} leaked into {sorted(found)}"
    assert "[secret:CANARY_SECRET]" in hook.body["message"]  # the error reached the message, scrubbed
    assert "[secret:NOTIFY_CANARY_HOOK]" in Path(rec["output"]).read_text()  # the runner's scrubber knew it
    assert "[secret:NOTIFY_CANARY_HOOK]" in texts["book pages"]  # the page shows the run, scrubbed


def test_messages_are_scrubbed_even_when_the_row_is_not(cli, scratch, webhook, db, tmp_path):
    """Control: with the runner's scrubbing off (tests only) the row holds the secrets, so the search above can
    find them; the message is still clean, because the dispatcher scrubs what it sends."""
    canary = "canary/" + secrets.token_urlsafe(18) + "+@="
    hook_token = "hook-" + secrets.token_urlsafe(18)
    scratch.write([{"events": ["failed"], "channels": [webhook.url("h/${NOTIFY_CANARY_HOOK}")]}],
                  kernel_env=["NOTIFY_CANARY_HOOK"])
    res = cli("run", LEAKS, "-e", scratch.name, "--json",
              env={"CANARY_SECRET": canary, "NOTIFY_CANARY_HOOK": hook_token, "STACKBOOK_UNSAFE_NO_SCRUB": "1",
                   "STACKBOOK_RUN_STORE": str(tmp_path / "runs")})
    assert res.code == 1, res
    row = db.execute("select row_to_json(r)::text from stackbook.runs r where id = %s", (res.json()["id"],)).fetchone()
    assert leaks(row[0], canary) and leaks(row[0], hook_token)
    [hook] = webhook.received
    assert leaks(json.dumps(hook.body), canary) == [] and leaks(json.dumps(hook.body), hook_token) == []
    assert "[secret:CANARY_SECRET]" in hook.body["message"]


# ---------------------------------------------------------------- Prometheus alerting rules and promtool


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


@needs_promtool
def test_generated_rules_pass_promtool_and_a_planted_mistake_fails_it(cli, tmp_path):
    rules_file = tmp_path / "stackbook.rules.yml"
    res = cli("metrics", "--rules", str(rules_file), "-e", "prod")
    assert res.code == 0 and res.out == "", res
    doc = yaml.safe_load(rules_file.read_text())
    alerts = {r["alert"] for r in doc["groups"][0]["rules"]}
    assert alerts == {"StackbookRunbookFailing", "StackbookRunbookStale", "StackbookRunTooLong",
                      "StackbookNotifyFailing"}
    for rule in doc["groups"][0]["rules"]:
        assert 'env="prod"' in rule["expr"] and rule["labels"]["severity"] in ("critical", "warning")
        assert "{{ $labels.runbook }}" in rule["annotations"]["summary"]
        assert "{{ $labels.env }}" in rule["annotations"]["summary"]
    checked = _promtool("check", "rules", str(rules_file), cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(doc['groups'][0]['rules'])} rules found" in checked.stdout
    planted = tmp_path / "planted.rules.yml"
    planted.write_text(rules_file.read_text().replace("count by (runbook, env) (", "count by (runbook, env) ((", 1))
    broken = _promtool("check", "rules", str(planted), cwd=tmp_path)
    assert broken.returncode == 1 and "StackbookRunbookFailing" in broken.stdout + broken.stderr


def scrape(env: str) -> tuple[str, float]:
    """A real scrape: `stackbook metrics --serve PORT -e ENV` in a process of its own, GET /metrics."""
    port = free_port()
    server = subprocess.Popen([STACKBOOK, "metrics", "--serve", str(port), "-e", env], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
                    return answer.read().decode(), time.time()
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"no /metrics on port {port}: {server.stderr.read()}") from None
                time.sleep(0.2)
    finally:
        server.terminate()
        server.wait(timeout=30)


def input_series(text: str, env: str, scraped_at: float) -> list[dict]:
    """promtool input series from a scrape: each sample of ENV held for an hour; Unix times made relative to the
    test's clock (promtool starts at 0); a failed-delivery counter seen rising by one 10 minutes in."""
    from prometheus_client.parser import text_string_to_metric_families

    out = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("env") != env:
                continue
            labels = ", ".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            value = sample.value
            if sample.name.endswith("_timestamp_seconds"):
                values = f"{value - scraped_at:.0f}x60"
            elif sample.name == "stackbook_notifications_total" and sample.labels["status"] == "failed" and value:
                values = f"{value - 1:g}x10 {value:g}x50"
            else:
                values = f"{value:g}x60"
            out.append({"series": f"{sample.name}{{{labels}}}", "values": values})
    return out


def render_labels(template: str, labels: dict) -> str:
    """``{{ $labels.name }}`` replaced as Prometheus replaces it."""
    for name, value in labels.items():
        template = template.replace("{{ $labels." + name + " }}", value)
    return template


def expected(rules_doc: dict, alert: str, *label_sets: dict) -> list[dict]:
    """promtool's exp_alerts: the labels, and the annotations rendered as Prometheus renders them."""
    out = []
    for labels in label_sets:
        rule = next(r for r in rules_doc["groups"][0]["rules"] if r["alert"] == alert
                    and r["labels"].get("runbook", labels["runbook"]) == labels["runbook"])  # per-runbook rules
        labels = {"severity": rule["labels"]["severity"], **labels}
        annotations = {k: render_labels(v, labels) for k, v in rule["annotations"].items()}
        out.append({"exp_labels": labels, "exp_annotations": annotations})
    return out


@needs_promtool
def test_each_rule_fires_as_intended_on_series_from_a_real_scrape(cli, scratch, db, tmp_path):
    from stackbook.notify import store
    from stackbook.notify.deliver import Delivery

    scratch.add_run("platform_check", "succeeded", hours_ago=5)  # window 2 h: stale
    scratch.add_run("platform_check", "failed", hours_ago=0.05)  # and failing
    scratch.add_run("compliance_audit", "succeeded", hours_ago=1)  # window 48 h: fresh, fires nothing
    scratch.add_run("dr_drill", "running", hours_ago=0.01)  # timeout 900 s: too long once held 960 s
    store.record(db, [Delivery(0, "json:0badc0de", "failed", "failed", "Connection error", 3, 1.0),
                      Delivery(0, "json:0badc0de", "succeeded", "sent", None, 1, 0.1)],
                 run_id=None, runbook="platform_check", env=scratch.name)
    text, scraped_at = scrape(scratch.name)
    rules_file = tmp_path / "stackbook.rules.yml"
    assert cli("metrics", "--rules", str(rules_file), "-e", scratch.name).code == 0
    doc = yaml.safe_load(rules_file.read_text())
    used = {m for r in doc["groups"][0]["rules"] for m in re.findall(r"stackbook_[a-z_]+", r["expr"])}
    assert used <= {line.split("{")[0] for line in text.splitlines() if line.startswith("stackbook_")}, used
    env = scratch.name
    tests = {"rule_files": [rules_file.name], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": input_series(text, env, scraped_at),
        "alert_rule_test": [
            {"eval_time": "30m", "alertname": "StackbookRunbookFailing",
             "exp_alerts": expected(doc, "StackbookRunbookFailing", {"runbook": "platform_check", "env": env})},
            {"eval_time": "30m", "alertname": "StackbookRunbookStale",
             "exp_alerts": expected(doc, "StackbookRunbookStale",
                                    {"runbook": "platform_check", "env": env, "window": "2h"})},
            {"eval_time": "10m", "alertname": "StackbookRunTooLong", "exp_alerts": []},  # pending: for 960 s
            {"eval_time": "30m", "alertname": "StackbookRunTooLong",
             "exp_alerts": expected(doc, "StackbookRunTooLong",
                                    {"runbook": "dr_drill", "env": env, "timeout": "900s"})},
            {"eval_time": "5m", "alertname": "StackbookNotifyFailing", "exp_alerts": []},  # before the failure
            {"eval_time": "30m", "alertname": "StackbookNotifyFailing",
             "exp_alerts": expected(doc, "StackbookNotifyFailing", {"runbook": "platform_check", "env": env})},
        ],
    }]}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests, sort_keys=False, allow_unicode=True))
    result = _promtool("test", "rules", "tests.yml", cwd=tmp_path)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr
