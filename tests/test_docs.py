"""The documentation cannot drift from the code.

Every command and subcommand, found in click's own command tree (``stackbook.cli.main``,
whose lazy subcommands are loaded here), has help text, every option too, and each is
named in the README's "Commands" table, which names nothing that does not exist. The
README's exit-code table is exactly the codes the errors carry plus those of signals.
Files and README sections that comments cite exist, and the README's shell one-liners
that ask Python for a value run.
"""

from __future__ import annotations

import re
import subprocess
import sys

import click
import pytest

from stackbook.cli import common, main
from stackbook.core import errors
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def _commands() -> list[tuple[str, click.Command, click.Context]]:
    """(``stackbook a b``, command, context) for the top command and every command below it."""
    found = []
    pending = [("stackbook", main, click.Context(main, info_name="stackbook"))]
    while pending:
        path, command, ctx = pending.pop()
        found.append((path, command, ctx))
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                assert sub is not None, f"{path} lists {name!r} but cannot load it"
                pending.append((f"{path} {name}", sub, click.Context(sub, parent=ctx, info_name=name)))
    return sorted(found, key=lambda item: item[0])


COMMANDS = _commands()


def _section(title: str) -> str:
    """The README text under the heading ``title`` (any level), up to the next heading of that level or above."""
    match = re.search(rf"^(#+) {re.escape(title)}$", README, flags=re.M)
    assert match, f"README.md has no section {title!r}"
    rest = README[match.end():]
    end = re.search(rf"^#{{1,{len(match.group(1))}}} ", rest, flags=re.M)
    return rest[: end.start()] if end else rest


def _code_spans(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", text)


def test_the_walk_sees_lazy_groups_and_their_subcommands():
    paths = {path for path, _, _ in COMMANDS}
    assert {"stackbook run", "stackbook runs show", "stackbook pipeline run", "stackbook schedule airflow"} <= paths
    assert len(paths) > 15


@pytest.mark.parametrize("path, command, ctx", COMMANDS, ids=[path for path, _, _ in COMMANDS])
def test_every_command_and_option_has_help(path, command, ctx):
    assert (command.help or "").strip(), f"`{path}` has no help text (its docstring)"
    bare = [p.name for p in command.get_params(ctx) if isinstance(p, click.Option) and not p.help]
    assert bare == [], f"`{path}`: options without help: {bare}"


def test_every_command_is_in_the_readme_commands_table():
    spans = _code_spans(_section("Commands"))
    missing = [path for path, _, _ in COMMANDS[1:]
               if not any(s == path or s.startswith(path + " ") for s in spans)]
    assert missing == [], f"README.md, section Commands, does not name: {missing}"


def test_the_readme_commands_table_names_only_real_commands():
    paths = {path for path, _, _ in COMMANDS}
    named = [s for s in _code_spans(_section("Commands")) if s.startswith("stackbook ")]
    assert named, "the Commands section names no command"
    unknown = [s for s in named if s not in paths]
    assert unknown == [], f"README.md, section Commands, names commands that do not exist: {unknown}"


def test_the_readme_exit_codes_are_the_codes_the_errors_carry():
    table = {int(code) for code in re.findall(r"^\| (\d+) \|", _section("Exit codes"), flags=re.M)}
    carried = {cls.exit_code for cls in vars(errors).values()
               if isinstance(cls, type) and issubclass(cls, errors.StackbookError)}
    assert table == carried | {0, errors.EXIT_WAITING, common.EXIT_CANCELLED, common.EXIT_BROKEN_PIPE}


CITING = ["Makefile", ".ci/run", "README.md", "pyproject.toml", "_toc.yml", "_config.yml",
          *(str(p.relative_to(ROOT)) for pattern in ("pipelines/**/*.yaml", "infra/**/*.md", "infra/**/*.sh",
                                                     "infra/**/*.yml", "benchmarks/*.md", "book/*.md")
            for p in sorted(ROOT.glob(pattern)))]


@pytest.mark.parametrize("rel", CITING)
def test_cited_files_and_readme_sections_exist(rel):
    path = ROOT / rel
    text = path.read_text()
    files = {m for m in re.findall(r"(?<![\w./-])([\w./-]+\.md)\b", text) if "://" not in m}
    missing = [f for f in sorted(files) if not (ROOT / f).exists() and not (path.parent / f).exists()]
    assert missing == [], f"{rel} cites files that do not exist: {missing}"
    headings = set(re.findall(r"^#+ (.+)$", README, flags=re.M))
    sections = re.findall(r'README "([^"]+)"', text)
    assert [s for s in sections if s not in headings] == [], f"{rel} cites README sections that do not exist"


@pytest.mark.parametrize("snippet", re.findall(r"\.venv/bin/python -c '([^']+)'", README))
def test_the_readme_python_one_liners_run(snippet, database_url):
    proc = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip(), f"README: python -c {snippet!r} fails: {proc.stderr[-800:]}"
