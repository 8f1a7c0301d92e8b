"""The output policy every writing command follows: nothing is ever deleted but our own output.

- An existing target is replaced only with ``overwrite``; never when the target and an input overlap
  (equal, or one inside the other), nor when the target is the current folder or one of its parents.
- An existing frame folder is replaced only when the manifest this tool wrote into it
  (:data:`MANIFEST`) lists everything in it: a file name pattern is not proof of ownership.
- Replacement is atomic (:mod:`d3d.atomic`): the new output is complete before the old one goes.
- Where the output goes is tried before any slow work (a file created there and removed at once): a
  read-only folder, a file in the path or a virtual file system is refused in one line up front.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from d3d.atomic import atomic_write
from d3d.errors import D3DError, reason

MANIFEST = ".d3d-manifest.json"


def _inside(a: Path, b: Path) -> bool:
    """``a`` equals ``b`` or lies inside it."""
    return a == b or b in a.parents


def _existing_ancestor(path: Path) -> Path:
    """The nearest ancestor of ``path`` that exists: where the folders leading to it would be created."""
    p = path.parent
    while not (p.exists() or p.is_symlink()) and p != p.parent:
        p = p.parent
    return p


def unwritable_reason(folder: Path) -> str | None:
    """Why nothing can be created in ``folder`` (a file, a read-only or virtual file system, no
    permission), or None where it can. Tried for real with a temporary file, which is removed at once:
    permission bits alone say nothing for root, a read-only mount or /proc."""
    if not folder.is_dir():
        return f"{folder} is a file, not a folder" if folder.exists() else f"{folder} does not exist"
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".d3d-probe-")
    except OSError as exc:
        return f"cannot create files in {folder}: {reason(exc)}"
    os.close(fd)
    os.unlink(probe)
    return None


def check_writable(target: Path, what: str = "", inside: bool = False) -> None:
    """Raises a one-line :class:`D3DError` where ``target`` (a file or folder to create or replace; with
    ``inside``, a folder to write files into) could not be written: the folder the files go into, or its
    nearest existing ancestor, takes no new files."""
    label = f"{target}" + (f" ({what})" if what else "")
    t = Path(os.path.abspath(target))
    why = unwritable_reason(_existing_ancestor(t / "file" if inside else t))
    if why is not None:
        raise D3DError(f"{label}: cannot write there ({why}); choose another location")


def manifest_of_tree(folder: Path) -> None:
    """Writes the manifest of every file now under ``folder`` (for outputs written as a whole tree)."""
    write_manifest(folder, [p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()])


def read_manifest(folder: Path) -> set[str] | None:
    """The file names a d3d manifest in ``folder`` lists, or None where there is none (or it is unreadable)."""
    try:
        data = json.loads((folder / MANIFEST).read_text())
        return {str(name) for name in data["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _unlisted(folder: Path, listed: set[str]) -> list[str]:
    """Entries of ``folder`` (recursively, as paths relative to it) that the manifest does not account for:
    a file not listed, or a sub-folder holding no listed file."""
    dirs = {parent.as_posix() for name in listed for parent in Path(name).parents if parent != Path(".")}
    found = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder).as_posix()
        if rel == MANIFEST:
            continue
        is_dir = p.is_dir() and not p.is_symlink()
        if (is_dir and rel not in dirs) or (not is_dir and rel not in listed):
            found.append(rel)
    return sorted(found)


def write_manifest(folder: Path, names: Iterable[str]) -> None:
    """Records the files d3d wrote into ``folder``, as paths relative to it (the proof that a later run
    may replace them)."""
    (folder / MANIFEST).write_text(json.dumps({"tool": "d3d-trt", "files": sorted(names)}, indent=0))


def check_location(target: Path, *, inputs: Sequence[Path | None] = (), what: str = "") -> Path:
    """The rules that hold even for a folder d3d keeps writing into: the target is neither the current
    folder nor one of its parents, and it does not overlap an input. Returns the resolved target."""
    label = f"{target}" + (f" ({what})" if what else "")
    t = Path(os.path.abspath(target)).resolve()
    cwd = Path.cwd().resolve()
    if _inside(cwd, t):
        raise D3DError(f"{label}: is the current folder or one of its parents: refusing to write there")
    for inp in inputs:
        if inp is None:
            continue
        i = Path(os.path.abspath(inp)).resolve()
        if _inside(t, i) or _inside(i, t):
            relation = "is" if t == i else "overlaps"
            raise D3DError(f"{label}: {relation} the input {inp}: choose another output")
    return t


def check_target(
    target: Path, *, inputs: Sequence[Path | None] = (), overwrite: bool = False, folder: bool = False, what: str = ""
) -> None:
    """Raises a one-line :class:`D3DError` where writing ``target`` could lose anything; returns where the
    write may go ahead. ``folder``: the target is a folder of frames (else a single file)."""
    label = f"{target}" + (f" ({what})" if what else "")
    t = check_location(target, inputs=inputs, what=what)
    check_writable(target, what)  # before any slow work (a model load, an export, a run)
    if not (t.exists() or t.is_symlink()):
        return
    if folder:
        if not t.is_dir():
            raise D3DError(f"{label}: exists and is not a folder: not replacing it with frames")
        entries = list(t.iterdir())
        if not entries:
            return  # an empty folder: nothing to lose
        if not overwrite:
            raise D3DError(f"{label}: already exists; pass --overwrite to replace it")
        listed = read_manifest(t)
        if listed is None:
            raise D3DError(f"{label}: not a folder written by d3d (no {MANIFEST}): not replacing it")
        foreign = _unlisted(t, listed)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" (+{len(foreign) - 3} more)" if len(foreign) > 3 else "")
            raise D3DError(f"{label}: holds files d3d did not write ({shown}): not replacing it")
        # Replacing moves the old folder aside, then deletes it: a read-only one would fail only at the end.
        why = unwritable_reason(t)
        if why is not None:
            raise D3DError(f"{label}: cannot replace it ({why}); make it writable or choose another output")
        return
    if t.is_dir():
        raise D3DError(f"{label}: is a folder; give a file name")
    if not overwrite:
        raise D3DError(f"{label}: already exists; pass --overwrite to replace it")


def write_output(
    target: Path,
    data: bytes | str,
    *,
    inputs: Sequence[Path | None] = (),
    overwrite: bool = False,
    what: str = "",
) -> None:
    """Checks ``target`` against the policy, then writes ``data`` atomically."""
    check_target(target, inputs=inputs, overwrite=overwrite, what=what)
    try:
        with atomic_write(target) as tmp:
            if isinstance(data, str):
                tmp.write_text(data)
            else:
                tmp.write_bytes(data)
    except OSError as exc:
        raise D3DError(f"{target}: cannot write ({reason(exc)})") from exc
