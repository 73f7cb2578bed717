"""stackbook.core.fastexit: an exit without module teardown still runs exit handlers, flushes and waits for threads."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run(code: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)


def test_exit_code_handlers_and_unflushed_output_survive(tmp_path):
    res = run("""
        import atexit, pathlib, sys
        from stackbook.core.fastexit import run_then_exit

        atexit.register(lambda: pathlib.Path("handler-ran").write_text("yes"))

        def main():
            sys.stdout.write("no newline, still buffered")
            sys.exit(3)

        run_then_exit(main)
        """, tmp_path)
    assert res.returncode == 3, res.stderr
    assert res.stdout == "no newline, still buffered"
    assert (tmp_path / "handler-ran").read_text() == "yes"


def test_a_message_exits_1_and_is_printed(tmp_path):
    res = run("""
        import sys
        from stackbook.core.fastexit import run_then_exit
        run_then_exit(lambda: sys.exit("stackbook: error: something named"))
        """, tmp_path)
    assert res.returncode == 1
    assert res.stderr.strip() == "stackbook: error: something named"


def test_returning_normally_exits_0_and_a_running_thread_is_waited_for(tmp_path):
    res = run("""
        import pathlib, threading, time
        from stackbook.core.fastexit import run_then_exit

        def late():
            time.sleep(0.5)
            pathlib.Path("thread-finished").write_text("yes")

        run_then_exit(lambda: threading.Thread(target=late).start())
        """, tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "thread-finished").read_text() == "yes"
