"""A run's two folders, results/<run>/ and checkpoints/<run>/: what a run owns and nothing more.

A run name cannot escape or alias its parent folders; a run is used by one process at
a time (a lock file beside its checkpoint folder); an overwrite completes or changes nothing;
and a command that is refused leaves the folders as it found them.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from utils.errors import InputError, reason

# Letters, digits, '_', '-' and '.', not starting with '.' or '-': no '..', no hidden folder, no option.
RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def check_run_name(name: str) -> None:
    if not RUN_NAME.fullmatch(name or ""):
        raise InputError(f"RUN_NAME {name!r} is not a plain folder name: use letters, digits, '_', '-' and '.', "
                         f"starting with a letter, digit or '_'.")


def make_folder(path: Path) -> None:
    """mkdir -p, or one sentence naming the folder that cannot be made."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"Cannot create the folder {path} ({reason(error)}); check --results_dir and "
                         f"--checkpoint_dir.") from None


def inside(path: Path, parent: Path) -> bool:
    """Whether `path` lies strictly inside `parent`, links resolved."""
    path, parent = path.resolve(), parent.resolve()
    return path != parent and parent in path.parents


@dataclass(frozen=True)
class RunFolders:
    """results_dir/<run> and checkpoint_dir/<run>, proven to lie strictly inside their parents."""

    results: Path
    checkpoints: Path

    @classmethod
    def of(cls, results_dir: str, checkpoint_dir: str, run_name: str) -> RunFolders:
        check_run_name(run_name)
        folders = cls(Path(results_dir) / run_name, Path(checkpoint_dir) / run_name)
        for folder, parent in ((folders.results, results_dir), (folders.checkpoints, checkpoint_dir)):
            if folder.is_symlink() or not inside(folder, Path(parent)):
                raise InputError(f"{folder} is a link or lies outside {parent}; a run owns only real folders "
                                 f"inside --results_dir and --checkpoint_dir.")
        return folders

    def seeded(self, seed: int) -> RunFolders:
        """Where one seed of a run of several SEEDS writes: seed<k>/ inside each folder."""
        return RunFolders(self.results / f"seed{seed}", self.checkpoints / f"seed{seed}")

    def written(self) -> bool:
        """A run exists once it has written a checkpoint or an evaluation (a run that only
        skipped categories, or failed before training, may be run again)."""
        return any(self.checkpoints.glob("**/*.pt")) or any(self.results.glob("**/predictions/*.npz"))

    def config(self) -> dict | None:
        """The run's config.json, or None without one."""
        path = self.results / "config.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise InputError(f"Cannot read {path} ({error}); restore it, or train a new run.") from None

    def replace(self) -> None:
        """Delete the run, both folders or neither: each is first renamed aside, then deleted."""
        moved: list[tuple[Path, Path]] = []
        try:
            for folder in (self.results, self.checkpoints):
                if folder.exists():
                    aside = folder.with_name(f".{folder.name}.replaced-{os.getpid()}")
                    folder.rename(aside)
                    moved.append((folder, aside))
        except OSError as error:
            for folder, aside in reversed(moved):
                aside.rename(folder)
            raise InputError(f"Cannot move {error.filename} aside to overwrite the run ({reason(error)}); nothing "
                             f"was deleted: make its parent folder writable, or choose another --run_name.") from None
        for _, aside in moved:
            shutil.rmtree(aside, ignore_errors=True)


def holder_of(file: TextIO) -> str:
    """Who holds a lock file: "process <pid>" as the holder wrote it. The holder writes its pid just
    after it takes the lock, so a file still empty is read again for up to a second."""
    for _ in range(100):
        file.seek(0)
        pid = file.read().strip()
        if pid:
            return f"process {pid}"
        time.sleep(0.01)
    return "another process"


class RunLock:
    """An exclusive lock on a run, held by one process: the file .<run>.lock beside the run's
    checkpoint folder (beside, not inside, so that an overwrite can move the folder aside
    while the lock holds).

    The kernel releases the lock when the process ends, however it ends, so a lock left by a
    killed process never blocks. The file holds the holder's process id for the message and
    is removed on release, so a finished or refused command leaves nothing behind.
    """

    def __init__(self, folder: Path, run_name: str):
        self.path = folder.parent / f".{folder.name}.lock"
        self.run_name = run_name
        self.file = None

    def acquire(self) -> RunLock:
        make_folder(self.path.parent)
        while True:
            file = open(self.path, "a+")
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                holder = holder_of(file) if error.errno in (errno.EAGAIN, errno.EACCES) else None
                file.close()
                if holder is None:
                    raise
                raise InputError(f"Run {self.run_name!r} is in use by {holder} (lock {self.path}); wait for it to "
                                 f"finish, or choose another --run_name.") from None
            # The holder before us may have removed the file after we opened it: lock the file that is there.
            if self.path.exists() and os.stat(self.path).st_ino == os.fstat(file.fileno()).st_ino:
                break
            file.close()
        file.truncate(0)
        file.write(f"{os.getpid()}\n")
        file.flush()
        self.file = file
        return self

    def release(self) -> None:
        if self.file is not None:
            self.path.unlink(missing_ok=True)
            self.file.close()
            self.file = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()
