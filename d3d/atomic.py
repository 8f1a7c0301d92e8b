"""Write-then-rename outputs: a failure never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class AtomicFile:
    """A temporary sibling of ``path`` (same suffix, so format-by-extension writers work) that
    ``commit`` renames onto ``path`` with the usual permissions, and ``abort`` deletes. ``tmp_dir``: where
    the temporary file goes instead (a folder on the same file system, e.g. a resumable run's work folder,
    which contains it if the process is killed)."""

    def __init__(self, path: str | os.PathLike[str], tmp_dir: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        where = self.path.parent if tmp_dir is None else Path(tmp_dir)
        # 0600 until commit; the suffix is kept so format-by-extension writers work.
        fd, tmp = tempfile.mkstemp(dir=where, prefix=f".{self.path.stem}.", suffix=self.path.suffix)
        os.close(fd)
        self.tmp = Path(tmp)

    def commit(self) -> None:
        try:
            os.chmod(self.tmp, 0o666 & ~_umask())  # mkstemp creates 0600
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()  # e.g. the target is a folder: the temporary file must not stay behind
            raise

    def abort(self) -> None:
        self.tmp.unlink(missing_ok=True)


class AtomicDir:
    """A temporary sibling folder that ``commit`` renames onto ``path`` (replacing it) and ``abort``
    deletes. ``tmp``: an existing folder on the same file system to commit instead of a new one."""

    def __init__(self, path: str | os.PathLike[str], tmp: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if tmp is not None:
            self.tmp = Path(tmp)
            return
        self.tmp = Path(tempfile.mkdtemp(dir=self.path.parent, prefix=f".{self.path.name}."))

    def commit(self) -> None:
        import shutil

        os.chmod(self.tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
        if not self.path.exists():
            os.replace(self.tmp, self.path)
            return
        # Move the old output aside first, so the complete new one is in place before the old one goes.
        old = Path(tempfile.mkdtemp(dir=self.path.parent, prefix=f".{self.path.name}.old."))
        aside = old / "previous"
        os.replace(self.path, aside)
        try:
            os.replace(self.tmp, self.path)
        except BaseException:
            os.replace(aside, self.path)
            shutil.rmtree(old, ignore_errors=True)
            raise
        shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        import shutil

        shutil.rmtree(self.tmp, ignore_errors=True)


@contextlib.contextmanager
def _committed(kind: type[AtomicFile] | type[AtomicDir], path: str | os.PathLike[str]) -> Iterator[Path]:
    """The temporary ``kind`` of ``path`` for the block; committed if the block succeeds, else aborted."""
    target = kind(path)
    try:
        yield target.tmp
    except BaseException:
        target.abort()
        raise
    target.commit()


def atomic_write(path: str | os.PathLike[str]) -> contextlib.AbstractContextManager[Path]:
    """``with atomic_write(p) as tmp: write(tmp)`` — renamed onto ``p`` only if the block succeeds."""
    return _committed(AtomicFile, path)


def atomic_dir(path: str | os.PathLike[str]) -> contextlib.AbstractContextManager[Path]:
    """``with atomic_dir(p) as tmp: fill(tmp)`` — the folder replaces ``p`` only if the block succeeds."""
    return _committed(AtomicDir, path)
