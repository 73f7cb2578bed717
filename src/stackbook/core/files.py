"""Files written and read the one way stackbook does it: atomically, owner-only, with clear errors.

* ``atomic_write_text`` / ``atomic_write_bytes`` write to a temporary file in the target's
  folder and rename it over the target, so a reader (node_exporter, a browser, the next run)
  never sees half a file; on any error, a full disk included, the temporary file is removed
  and the target is left as it was. Files are created ``0600`` unless a mode is given:
  what stackbook writes under ``.stackbook/`` is for its owner alone. Missing folders on the
  way are created ``0700`` for such a file (``0755`` for one others may read).
* ``make_private`` takes group and other permissions off a tree (``stackbook up`` runs it
  over ``.stackbook/``, so what older versions left there readable is the owner's only too).
* ``load_yaml`` reads a YAML file that must be text and valid YAML, and raises the error
  class the caller names with a message that names the file and the problem.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from stackbook.core.errors import StackbookError, UsageError

PRIVATE = 0o600


def atomic_write_bytes(path: str | Path, data: bytes, *, mode: int = PRIVATE) -> Path:
    """Replace PATH by DATA in one rename; nothing is left behind if the write fails."""
    import tempfile  # not at import time: the CLI imports this module (through environments) on every start

    path = Path(path)
    make_dirs(path.parent, mode=0o700 if not mode & 0o077 else 0o755)
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


def make_dirs(path: str | Path, *, mode: int = 0o700) -> Path:
    """PATH and its missing parents, each created with MODE (``Path.mkdir(parents=True)`` gives parents the
    default mode); existing folders are left as they are."""
    path = Path(path)
    missing, parent = [], path
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=mode)
        except FileExistsError:  # made by another process meanwhile
            continue
    return path


def make_private(root: str | Path, *, skip: tuple[Path, ...] = ()) -> int:
    """Group and other permissions off every folder and file under ROOT but the trees in SKIP and what another
    user owns (ROOT itself is left as it is: its mode is its caller's to choose); symbolic links are not followed.
    Returns how many modes it changed."""
    changed = 0
    skip_set = {Path(p) for p in skip}
    uid = os.geteuid()
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = [d for d in dirs if here / d not in skip_set]
        for entry in (*(here / d for d in dirs), *(here / f for f in files)):
            try:
                st = entry.lstat()
                if st.st_uid == uid and st.st_mode & 0o077 and not stat.S_ISLNK(st.st_mode):
                    os.chmod(entry, st.st_mode & 0o7700)
                    changed += 1
            except FileNotFoundError:  # a scratch file removed while we walked: nothing left to protect
                continue
    return changed


def atomic_write_text(path: str | Path, text: str, *, mode: int = PRIVATE) -> Path:
    """``atomic_write_bytes`` of TEXT encoded as UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def read_text(path: str | Path, *, what: str = "file", error: type[StackbookError] = UsageError) -> str:
    """The text of PATH; a file that is missing or not UTF-8 text is ERROR naming WHAT and the path."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path} is not UTF-8 text (byte {exc.start}): save it as text") from None
    except IsADirectoryError:
        raise error(f"{what} {path} is a directory, not a file") from None
    if "\x00" in text:  # valid UTF-8, but no text file holds NUL characters
        raise error(f"{what} {path} is not text (a NUL byte at character {text.index(chr(0))}): save it as text")
    return text


def load_yaml(path: str | Path, *, what: str = "file", error: type[StackbookError] = UsageError,
              default: Any = None) -> Any:
    """Parse the YAML file PATH (``default`` when it is empty); bad bytes or bad YAML are ERROR naming it."""
    import yaml

    text = read_text(path, what=what, error=error)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{what} {path} is not valid YAML: {exc}") from None
    except (ValueError, RecursionError) as exc:  # a date like 2024-13-45, an int past Python's digit limit
        raise error(f"{what} {path} is not valid YAML: {str(exc)[:80]}") from None
    return default if data is None else data
