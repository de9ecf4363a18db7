"""The one writer of host files. Every target's bytes reach the node through here.

Rules (design.md, "Rules for host writes"):

* every path lives under the host root; host paths are absolute and never contain ``..``;
* every directory below the host root is opened relative to its verified parent descriptor with
  ``O_NOFOLLOW | O_DIRECTORY`` (``openat``), never re-resolved by path, so a directory swapped for
  a symlink mid-pass (``renameat2(RENAME_EXCHANGE)``) is refused, not followed;
* the final component is opened relative to its directory with ``O_NOFOLLOW`` and checked with
  ``lstat``: a symlink is refused, never followed;
* a write goes to a temp file created 0600 with ``O_EXCL`` in the target's directory, is
  ``fsync``-ed, renamed over the target, and the directory is ``fsync``-ed; on any error the temp
  file is removed and the old file is untouched;
* identical bytes (and mode) are never rewritten;
* a ``flock`` on the state directory keeps two agent processes on one node from interleaving.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from nodeagent.errors import HostFSError, LockTimeout, NotARegularFile, SymlinkRefused

__all__ = ["TEMP_MARKER", "HostFS", "WriteStats"]

TEMP_MARKER = ".nodeagent-tmp-"
"""Every temp file name contains this, so leftovers are recognisable (and swept)."""


@dataclass
class WriteStats:
    """Counters for what this writer did (benchmarks, metrics, tests)."""

    writes: int = 0
    removals: int = 0
    unchanged: int = 0
    swept: int = 0
    by_path: dict[str, int] = field(default_factory=dict)


def _describe(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, "error")
    return f"{name}: {os.strerror(exc.errno)}" if exc.errno else str(exc)


class DirectoryWalk:
    """Host paths under ``root`` (the ``--host-root``), and the descriptor walk every operation
    starts from: each directory opened from the root one component at a time, each with
    ``O_NOFOLLOW|O_DIRECTORY`` relative to its parent's descriptor."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.stats = WriteStats()
        self.known: dict[str, tuple[int, int, int]] = {}
        """(inode, mtime_ns, size) of each file as this writer last wrote or read it: a later
        change to the file that does not match is someone else's (drift), even an in-place edit;
        one that matches is a version a pass already saw (the agent's own write or read)."""
        self._swept: set[str] = set()

    # -- paths -----------------------------------------------------------------------------
    def real_path(self, host_path: str) -> str:
        """The path on this machine for an absolute host path (``/var/lib/kubelet/config.json``)."""
        pure = PurePosixPath(host_path)
        if not pure.is_absolute() or ".." in pure.parts or "\x00" in host_path:
            raise HostFSError(host_path, "host paths must be absolute and must not contain '..'")
        return os.path.join(self.root, *pure.parts[1:])

    def _split(self, host_path: str) -> tuple[str, str]:
        real = self.real_path(host_path)
        parent, name = os.path.split(real)
        if not name:
            raise HostFSError(host_path, "path names a directory, not a file")
        return parent, name

    def _components(self, real_dir: str) -> list[str]:
        relative = os.path.relpath(real_dir, self.root)
        return [] if relative == "." else relative.split(os.sep)

    def _open_dir(self, host_path: str, real_dir: str, *, create: int | None = None) -> tuple[int, list[str]]:
        """Open a directory under the root one component at a time, each relative to its parent's
        descriptor with O_NOFOLLOW|O_DIRECTORY; with ``create`` (a mode), make missing ones.

        Returns the descriptor and the host paths of the directories this call created.
        FileNotFoundError when a component is missing and ``create`` is None.
        """
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
        try:
            fd = os.open(self.root, flags)  # the host root itself is the agent's mount: trusted
        except OSError as exc:
            raise HostFSError(host_path, f"cannot open the host root: {_describe(exc)}") from exc
        created: list[str] = []
        walked = ""
        components = self._components(real_dir)
        try:
            for depth, part in enumerate(components, start=1):
                walked += "/" + part
                if create is not None:
                    try:
                        # parents get the usual 0755 (as os.makedirs gives them); only the leaf gets ``create``
                        os.mkdir(part, create if depth == len(components) else 0o755, dir_fd=fd)
                        created.append(walked)
                    except FileExistsError:
                        pass
                try:
                    child = os.open(part, flags | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as exc:
                    if exc.errno == errno.ENOENT:
                        raise
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        st = os.lstat(part, dir_fd=fd)
                        if stat.S_ISLNK(st.st_mode):
                            raise SymlinkRefused(walked, "directory is a symlink; refusing to follow it") from exc
                        raise NotARegularFile(walked, "is not a directory") from exc
                    raise HostFSError(walked, f"cannot open directory: {_describe(exc)}") from exc
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd, created

    @contextlib.contextmanager
    def _dirfd(self, host_path: str, parent: str) -> Iterator[int]:
        fd, _ = self._open_dir(host_path, parent)
        try:
            yield fd
        finally:
            os.close(fd)

    @staticmethod
    def _lstat(host_path: str, name: str, dirfd: int) -> os.stat_result | None:
        try:
            st = os.lstat(name, dir_fd=dirfd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise HostFSError(host_path, f"cannot stat: {_describe(exc)}") from exc
        if stat.S_ISLNK(st.st_mode):
            raise SymlinkRefused(host_path, "is a symlink; refusing to follow it (remove it)")
        if not stat.S_ISREG(st.st_mode):
            raise NotARegularFile(host_path, "is not a regular file (a directory or special file)")
        return st

    def _read_at(self, host_path: str, name: str, dirfd: int) -> bytes | None:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dirfd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise SymlinkRefused(host_path, "is a symlink; refusing to follow it") from exc
            raise HostFSError(host_path, f"cannot open: {_describe(exc)}") from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise NotARegularFile(host_path, "is not a regular file")
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            self.known[host_path] = (st.st_ino, st.st_mtime_ns, st.st_size)
            return b"".join(chunks)
        except OSError as exc:
            raise HostFSError(host_path, f"cannot read: {_describe(exc)}") from exc
        finally:
            os.close(fd)


class HostFS(DirectoryWalk):
    """Reads and writes host files under ``root``: the one writer of node files."""

    def read(self, host_path: str) -> bytes | None:
        """The file's bytes, or None when it (or its directory) does not exist."""
        parent, name = self._split(host_path)
        try:
            with self._dirfd(host_path, parent) as dirfd:
                self._lstat(host_path, name, dirfd)
                return self._read_at(host_path, name, dirfd)
        except FileNotFoundError:
            return None

    def mode(self, host_path: str) -> int | None:
        """The permission bits of a regular file (None when absent); a symlink is refused."""
        parent, name = self._split(host_path)
        try:
            with self._dirfd(host_path, parent) as dirfd:
                st = self._lstat(host_path, name, dirfd)
        except FileNotFoundError:
            return None
        return None if st is None else stat.S_IMODE(st.st_mode)

    def remove_empty_dir(self, host_path: str) -> bool:
        """Remove a directory only if it is empty (and not a symlink); False when it is not removed."""
        try:
            parent, name = self._split(host_path.rstrip("/"))
            with self._dirfd(host_path, parent) as dirfd:
                if not stat.S_ISDIR(os.lstat(name, dir_fd=dirfd).st_mode):
                    return False
                os.rmdir(name, dir_fd=dirfd)
        except (OSError, HostFSError):
            return False
        return True

    def list_files(self, host_path: str) -> list[str]:
        """Names of the entries of a directory that are not directories (files, symlinks and the
        like, as the kubelet's own ``os.ReadDir`` + ``!IsDir()`` sees them), sorted; [] when the
        directory does not exist."""
        try:
            fd, _ = self._open_dir(host_path, self.real_path(host_path))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise HostFSError(host_path, f"cannot open the directory: {_describe(exc)}") from exc
        try:
            names = []
            for name in os.listdir(fd):
                with contextlib.suppress(FileNotFoundError):
                    if not stat.S_ISDIR(os.lstat(name, dir_fd=fd).st_mode):
                        names.append(name)
            return sorted(names)
        except OSError as exc:
            raise HostFSError(host_path, f"cannot list the directory: {_describe(exc)}") from exc
        finally:
            os.close(fd)

    def is_dir(self, host_path: str) -> bool:
        """Whether a real directory (not a symlink to one, nor under one) stands at the path."""
        try:
            fd, _ = self._open_dir(host_path, self.real_path(host_path))
        except (OSError, HostFSError):
            return False
        os.close(fd)
        return True

    def ensure_dir(self, host_path: str, mode: int = 0o755, *, private: bool = False) -> None:
        """Create a directory (and parents) if missing; a symlink or file in its place is refused.

        ``private`` directories (the agent's own state and socket dirs) are brought to ``mode`` when
        the agent created them, or when they exist empty with a wider mode (a hostPath volume
        creates them 0755). An existing directory with content is never tightened: pointed at
        ``/etc`` or ``/run``, the agent must not make it 0700.
        """
        try:
            fd, created = self._open_dir(host_path, self.real_path(host_path), create=mode)
        except FileNotFoundError as exc:
            raise HostFSError(host_path, "cannot create directory: a parent vanished") from exc
        except OSError as exc:
            raise HostFSError(host_path, f"cannot create directory: {_describe(exc)}") from exc
        try:
            if not private:
                return
            st = os.fstat(fd)
            mine = bool(created) and created[-1] == "/" + "/".join(self._components(self.real_path(host_path)))
            if stat.S_IMODE(st.st_mode) != mode and (mine or not os.listdir(fd)):
                os.fchmod(fd, mode)
        except OSError as exc:
            raise HostFSError(host_path, f"cannot restrict the directory to {mode:o}: {_describe(exc)}") from exc
        finally:
            os.close(fd)

    def write(self, host_path: str, data: bytes, *, mode: int = 0o600) -> bool:
        """Atomically replace the file with ``data``; return False when nothing had to change."""
        parent, name = self._split(host_path)
        try:
            with self._dirfd(host_path, parent) as dirfd:
                self._sweep(parent, dirfd)
                st = self._lstat(host_path, name, dirfd)
                unchanged = (
                    st is not None
                    and stat.S_IMODE(st.st_mode) == mode
                    and self._read_at(host_path, name, dirfd) == data
                )
                if unchanged:
                    self.stats.unchanged += 1
                    return False
                self._replace(host_path, name, dirfd, data, mode)
        except FileNotFoundError as exc:
            raise HostFSError(host_path, "its directory does not exist") from exc
        self.stats.writes += 1
        self.stats.by_path[host_path] = self.stats.by_path.get(host_path, 0) + 1
        return True

    def _replace(self, host_path: str, name: str, dirfd: int, data: bytes, mode: int) -> None:
        tmp = f".{name[:64]}{TEMP_MARKER}{secrets.token_hex(6)}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, 0o600, dir_fd=dirfd)
        except OSError as exc:
            raise HostFSError(host_path, f"cannot create temp file: {_describe(exc)}") from exc
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fchmod(fd, mode)
                os.fsync(fd)
                st = os.fstat(fd)
                written = (st.st_ino, st.st_mtime_ns, st.st_size)
            finally:
                os.close(fd)
            os.rename(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
            self.known[host_path] = written
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dirfd)
            if isinstance(exc, OSError):
                raise HostFSError(host_path, f"write failed, file unchanged: {_describe(exc)}") from exc
            raise
        try:
            os.fsync(dirfd)
        except OSError as exc:
            raise HostFSError(host_path, f"written, but directory fsync failed: {_describe(exc)}") from exc

    def remove(self, host_path: str) -> bool:
        """Remove a file the agent owns; a symlink there is refused. False when already absent."""
        parent, name = self._split(host_path)
        try:
            with self._dirfd(host_path, parent) as dirfd:
                if self._lstat(host_path, name, dirfd) is None:
                    return False
                try:
                    os.unlink(name, dir_fd=dirfd)
                    os.fsync(dirfd)
                except FileNotFoundError:
                    return False
                except OSError as exc:
                    raise HostFSError(host_path, f"cannot remove: {_describe(exc)}") from exc
        except FileNotFoundError:
            return False
        self.stats.removals += 1
        return True

    def remove_socket(self, host_path: str) -> bool:
        """Remove a stale Unix socket (only a socket: anything else there is refused)."""
        parent, name = self._split(host_path)
        try:
            with self._dirfd(host_path, parent) as dirfd:
                try:
                    st = os.lstat(name, dir_fd=dirfd)
                except FileNotFoundError:
                    return False
                if not stat.S_ISSOCK(st.st_mode):
                    raise NotARegularFile(host_path, "is not a socket; refusing to remove it")
                os.unlink(name, dir_fd=dirfd)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise HostFSError(host_path, f"cannot remove socket: {_describe(exc)}") from exc
        return True

    def _sweep(self, parent: str, dirfd: int) -> None:
        """Remove temp files a killed agent left in this directory (once per directory)."""
        if parent in self._swept:
            return
        self._swept.add(parent)
        with contextlib.suppress(OSError):
            for entry in os.listdir(dirfd):
                if TEMP_MARKER in entry and entry.startswith("."):
                    with contextlib.suppress(OSError):
                        os.unlink(entry, dir_fd=dirfd)
                        self.stats.swept += 1

    def leftover_temp_files(self, host_dir: str) -> list[str]:
        """Temp files present in a host directory (for doctor and tests)."""
        try:
            fd, _ = self._open_dir(host_dir, self.real_path(host_dir))
        except (OSError, HostFSError):
            return []
        try:
            names = os.listdir(fd)
        except OSError:
            return []
        finally:
            os.close(fd)
        return sorted(n for n in names if TEMP_MARKER in n)

    def _lock_file(self, host_dir: str, name: str) -> int:
        """Open (creating, 0600) a lock file in the agent's private state dir, never through a link."""
        self.ensure_dir(host_dir, mode=0o700, private=True)
        with self._dirfd(host_dir, self.real_path(host_dir)) as dirfd:
            try:
                return os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dirfd)
            except OSError as exc:
                raise HostFSError(host_dir, f"cannot open the {name} file: {_describe(exc)}") from exc

    def presence(self, host_dir: str, *, exclusive: bool) -> int | None:
        """Take ``flock`` on ``<host_dir>/running`` without waiting: shared for a running agent
        (several may overlap in a rollout), exclusive for ``cleanup``, so neither runs while the
        other holds it. The descriptor (held until it is closed, or the process ends), or None
        when the other side holds it."""
        fd = self._lock_file(host_dir, "running")
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    @contextlib.contextmanager
    def lock(self, host_dir: str, *, timeout: float = 30.0) -> Iterator[None]:
        """Hold an exclusive ``flock`` on ``<host_dir>/lock`` for the duration of the block."""
        fd = self._lock_file(host_dir, "lock")
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LockTimeout(
                            host_dir, f"another nodeagent process holds the lock for over {timeout:g}s"
                        ) from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)
