"""Writes that are all-or-nothing: a temporary name in the same folder, renamed on success."""
from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

_TEMPORARY = re.compile(r"^\..+\.tmp-(\d+)$")  # what atomic_path names its temporary files

@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # matches _TEMPORARY
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)



def remove_stale_temporaries(folder: Path) -> list[str]:
    """Delete the temporary files of processes that no longer exist (what kill -9 leaves behind);
    returns their names. A live process's temporaries are left alone."""
    removed = []
    for path in Path(folder).rglob(".*.tmp-*"):
        match = _TEMPORARY.match(path.name)
        if match and path.is_file() and not _alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(str(path.relative_to(folder)))
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0  # another user's process (or a pid this OS cannot name)
    return True
