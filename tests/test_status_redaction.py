"""`stackbook up` and plain `stackbook status` never print the database password (CI logs keep them);
`status --json` keeps the full URL for scripts."""

from __future__ import annotations

from urllib.parse import urlsplit


def test_up_and_status_print_the_url_redacted_and_json_keeps_it(cli, database_url):
    status = cli("status", "--json").json()
    password = urlsplit(status["database_url"]).password
    assert password and status["database_url"] == database_url  # the full URL, for scripts
    for args in (("up",), ("status",)):
        res = cli(*args)
        assert res.code == 0, res
        assert password not in res.out + res.err, args
        if status["mode"] == "local" or args == ("status",):  # `up` names no URL when DATABASE_URL is set
            assert ":***@" in res.out, (args, res.out)


def test_external_database_url_is_redacted_the_same_way(cli, database_url):
    external = "postgresql://ops:Extern4l-Passw0rd@db.example.invalid:5432/stackbook"
    res = cli("status", env={"DATABASE_URL": external})
    assert res.code == 0, res
    assert "Extern4l-Passw0rd" not in res.out + res.err
    assert "postgresql://ops:***@db.example.invalid:5432/stackbook" in res.out
    assert cli("status", "--json", env={"DATABASE_URL": external}).json()["database_url"] == external
    up = cli("up", env={"DATABASE_URL": external})
    assert up.code == 0 and "Extern4l-Passw0rd" not in up.out + up.err, up
