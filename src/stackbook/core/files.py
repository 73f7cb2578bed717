"""Files written and read the one way stackbook does it: atomically, owner-only, with clear errors.

* ``atomic_write_text`` / ``atomic_write_bytes`` write to a temporary file in the target's
  folder and rename it over the target, so a reader (node_exporter, a browser, the next run)
  never sees half a file; on any error, a full disk included, the temporary file is removed
  and the target is left as it was. Files are created ``0600`` unless a mode is given:
  what stackbook writes under ``.stackbook/`` is for its owner alone.
* ``load_yaml`` reads a YAML file that must be text and valid YAML, and raises the error
  class the caller names with a message that names the file and the problem.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from stackbook.core.errors import StackbookError, UsageError

PRIVATE = 0o600


def atomic_write_bytes(path: str | Path, data: bytes, *, mode: int = PRIVATE) -> Path:
    """Replace PATH by DATA in one rename; nothing is left behind if the write fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | Path, text: str, *, mode: int = PRIVATE) -> Path:
    """``atomic_write_bytes`` of TEXT encoded as UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def read_text(path: str | Path, *, what: str = "file", error: type[StackbookError] = UsageError) -> str:
    """The text of PATH; a file that is missing or not UTF-8 text is ERROR naming WHAT and the path."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path} is not UTF-8 text (byte {exc.start}): save it as text") from None
    except IsADirectoryError:
        raise error(f"{what} {path} is a directory, not a file") from None


def load_yaml(path: str | Path, *, what: str = "file", error: type[StackbookError] = UsageError,
              default: Any = None) -> Any:
    """Parse the YAML file PATH (``default`` when it is empty); bad bytes or bad YAML are ERROR naming it."""
    import yaml

    text = read_text(path, what=what, error=error)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{what} {path} is not valid YAML: {exc}") from None
    return default if data is None else data
