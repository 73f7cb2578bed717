"""``python -m stackbook.book._jb build ...``: the ``jupyter-book`` command, started faster.

jsonschema imports its optional ``rfc3987_syntax`` module when nbformat loads
it, which compiles some forty lark grammars (several seconds on a busy
machine); nothing in the book validates IRI formats, so it is skipped, as the
runner does.
"""

import sys

sys.modules.setdefault("rfc3987_syntax", None)

from jupyter_book.cli.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
