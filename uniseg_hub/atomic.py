"""Atomic writers: a ``kill -9`` at any moment leaves a destination as the complete old or the complete new version.

Every writer of the library goes through this module (it imports nothing from uniseg_hub):

* **Files** (:func:`atomic_file`, :func:`atomic_write_bytes`, :func:`atomic_write_text`): the data is written to a
  temporary sibling ``.<name>.tmp-<pid>-<hex><suffix>`` in the destination's folder, fsynced, and renamed over the
  destination with ``os.replace`` (one atomic step); then the folder is fsynced.
* **Folders** (:func:`atomic_folder`, used by ``save_pretrained``, ``convert`` and the training run's ``best/`` and
  ``final/``): everything is written into a temporary sibling folder ``.<name>.tmp-<pid>-<hex>``, fsynced, then
  swapped in with two renames: the old folder to its backup ``.<name>.old``, the new one into place; the backup is
  then renamed to a temporary name and deleted. The destination is missing only between the two renames, and then
  the backup holds the complete old version: readers call :func:`recovered_path` (a missing folder with a backup
  reads as the backup; nothing is written), and the next writer first finishes the interrupted swap
  (:func:`recover_folder`: the backup goes back into place, or is deleted when the new folder is already there).
  A partly deleted folder only ever carries a temporary name, which readers never look at.

Temporary siblings left by a killed writer (its pid no longer runs) are deleted by the next write to the same
destination, so they never accumulate. With ``carry_over=True`` the entries of an existing folder that the new
version does not write (a ``.git``, the user's own files) are carried into it as hard links, so replacing a folder
loses only what was rewritten; a process working inside the replaced folder follows it (``os.chdir``).
Destinations are resolved through symlinks (the swap happens where the data is). On one host, concurrent writers
of one destination are serialised at the swap (``flock`` on the parent folder) and never delete each other's
temporary files. (Linux's ``renameat2(RENAME_EXCHANGE)`` would swap two folders in one step, but it is neither
portable nor exposed by Python; the backup rename + reader fallback works everywhere.)
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_file", "atomic_write_bytes", "atomic_write_text", "atomic_folder", "recovered_path", "recover_folder"]


# ---------------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (an empty file, same suffix); on success it replaces ``path``.

    The body writes the temporary file (``torch.save(obj, tmp)``, ``fig.savefig(tmp)`` ...). On an exception it is
    deleted and ``path`` is untouched; on success it is fsynced and renamed over ``path`` in one atomic step.
    """
    dest = _target(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if dest.name.endswith(".nii.gz") else dest.suffix  # writers (nibabel) pick formats by suffix
    _sweep(dest, suffix)
    tmp = _new_temp(dest, suffix, directory=False)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, dest)
    except BaseException:
        _remove(tmp)
        raise
    _fsync(dest.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_file`)."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_file`)."""
    return atomic_write_bytes(path, text.encode(encoding))


# ---------------------------------------------------------------------------------------------------------------
# Folders
# ---------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, *, carry_over: bool = False) -> Iterator[Path]:
    """Yield a new empty temporary folder next to ``path``; on success it replaces ``path`` as a whole.

    On an exception the temporary folder is deleted and ``path`` is untouched. On success its files are fsynced and
    it is swapped in (old folder → backup, new folder → ``path``, backup deleted; see the module docstring).

    Args:
        carry_over: keep the entries of an existing ``path`` that the body did not write (as hard links, copies
            where linking fails) instead of dropping them with the old version.
    """
    dest = _target(path)
    if os.path.lexists(dest) and not dest.is_dir():
        raise NotADirectoryError(f"{dest} exists and is not a folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    _sweep(dest, "")
    tmp = _new_temp(dest, "", directory=True)
    try:
        yield tmp
        _fsync_tree(tmp)
        with _swap_lock(dest.parent):
            recover_folder(dest)
            if carry_over and dest.is_dir():
                _carry_over(dest, tmp)
            here = _cwd_inside(dest)
            if dest.is_dir():
                os.rename(dest, _backup(dest))
                _fsync(dest.parent)
            try:
                os.rename(tmp, dest)
            except BaseException:
                recover_folder(dest)  # the old version goes back into place
                raise
            _fsync(dest.parent)
            if here is not None:  # this process worked inside the old folder: follow it to the new one
                os.chdir(dest / here if (dest / here).is_dir() else dest)
            _discard_backup(dest)
    except BaseException:
        _remove(tmp)
        raise


def recovered_path(path: str | os.PathLike) -> Path:
    """The folder to read at ``path``: ``path`` itself, or the backup of an interrupted :func:`atomic_folder` swap.

    A kill between the swap's two renames leaves ``path`` missing and its backup ``.<name>.old`` holding the complete
    old version; then that backup is returned. Reads only (the next write puts the backup back). Any other ``path``
    (a file, a name that is not a path) comes back unchanged.
    """
    p = Path(path)
    if p.exists():
        return p
    backup = _backup(Path(os.path.realpath(p)))
    return backup if backup.is_dir() else p


def recover_folder(path: str | os.PathLike) -> Path:
    """Finish an :func:`atomic_folder` swap that a kill interrupted (writers call it; safe to call any time).

    The backup goes back into place when ``path`` is missing (killed between the two renames), and is deleted when
    ``path`` is there (killed after them). Returns the resolved ``path``.
    """
    dest = _target(path)
    if _backup(dest).is_dir():
        if os.path.lexists(dest):
            _discard_backup(dest)
        else:
            os.rename(_backup(dest), dest)
            _fsync(dest.parent)
    return dest


# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------
def _target(path: str | os.PathLike) -> Path:
    dest = Path(os.path.realpath(os.fspath(path)))
    if not dest.name:
        raise ValueError(f"cannot write {os.fspath(path)!r} atomically: it has no name inside a parent folder")
    return dest


def _backup(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.old")


def _temp_name(dest: Path, suffix: str) -> Path:
    return dest.with_name(f".{dest.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def _new_temp(dest: Path, suffix: str, *, directory: bool) -> Path:
    """Create a fresh temporary sibling of ``dest`` (with the umask's permissions, like an ordinary write)."""
    while True:
        tmp = _temp_name(dest, suffix)
        try:
            if directory:
                os.mkdir(tmp)
            else:
                os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue


def _sweep(dest: Path, suffix: str) -> None:
    """Delete the temporary siblings of ``dest`` whose writer no longer runs (left by a kill)."""
    pattern = re.compile(re.escape(f".{dest.name}.tmp-") + r"(\d+)-[0-9a-f]{8}" + re.escape(suffix))
    try:
        names = os.listdir(dest.parent)
    except OSError:
        return
    for name in names:
        m = pattern.fullmatch(name)
        if m and not _running(int(m[1])):
            _remove(dest.parent / name)


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT there
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _discard_backup(dest: Path) -> None:
    """Delete the backup of ``dest`` after renaming it to a temporary name: no reader ever sees it half deleted."""
    if os.path.lexists(_backup(dest)):
        trash = _temp_name(dest, "")
        os.rename(_backup(dest), trash)
        _remove(trash)


def _cwd_inside(dest: Path) -> str | None:
    """The current working folder relative to ``dest`` when it lies inside ``dest``, else ``None``."""
    try:
        rel = os.path.relpath(os.getcwd(), dest)
    except (OSError, ValueError):
        return None
    return None if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel


def _carry_over(old: Path, new: Path) -> None:
    for entry in os.scandir(old):
        target = new / entry.name
        if os.path.lexists(target):
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), target)
        elif entry.is_dir():
            shutil.copytree(entry.path, target, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry.path, target)


def _link_or_copy(src: str, dst: str | os.PathLike) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _fsync(path: str | os.PathLike) -> None:
    """Flush a file or folder to disk (best effort: some platforms cannot open folders)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for root, _, files in os.walk(folder):
        for name in files:
            _fsync(os.path.join(root, name))
        _fsync(root)


@contextlib.contextmanager
def _swap_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder`` (where the platform has one) while swapping one of its entries."""
    try:
        import fcntl
        fd: int | None = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):
        fd = None
    try:
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        if fd is not None:
            os.close(fd)
