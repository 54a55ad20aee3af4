"""Writing result files so that a failed write never leaves half a file nor destroys the previous one.

Every writer of results (checkpoints, predictions, tables, config.json, figures) goes through
`atomic_write`: the content goes to `<name>.tmp` beside the file, which is renamed over the file
only once it is complete and on disk.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from utils.errors import InputError, reason


@contextmanager
def atomic_write(path: Path) -> Iterator[BinaryIO]:
    """A binary file to write the new content of `path` to; it replaces `path` when the block ends.

    If the write fails (a full disk, a read-only folder, a quota), or the block raises anything at
    all, the temporary file is removed and `path` keeps its previous content (or stays absent); a
    failed write is an InputError naming `path`. The temporary name ends in .tmp, so that no
    reader globbing *.pt or *.npz ever picks up a half-written file left by a killed process.
    """
    temporary = path.with_name(path.name + ".tmp")
    try:
        with open(temporary, "wb") as file:
            yield file
            file.flush()
            # On disk before the rename: otherwise a power cut could leave the new name on an empty file,
            # and network file systems report a full quota only here.
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except (OSError, RuntimeError) as error:  # torch's writer reports a failed write as RuntimeError
        temporary.unlink(missing_ok=True)
        raise InputError(f"Cannot write {path} ({reason(error)}); the disk may be full or the folder not "
                         f"writable, so free some space or choose another folder and rerun (the previous "
                         f"{path.name}, if any, is unchanged).") from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_atomically(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` through atomic_write."""
    with atomic_write(path) as file:
        file.write(text.encode("utf-8"))
