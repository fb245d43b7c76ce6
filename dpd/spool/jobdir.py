"""One job directory being built under ``jobs/.new-*`` and then put in place.

Guarantees: a directory appears under its final name only complete. Its files are written,
each fsynced through the descriptor that wrote it, the directory fsynced, and only then is
it renamed into place. The caller fsyncs ``jobs/`` after the rename (once for a whole batch
of them: group commit) before it tells anyone the job exists. A build that fails, or is
refused because its name is taken, is removed; one a crash interrupts stays a ``.new-*``
directory, which ``JobStore.load`` deletes.

Cost: the files of every build of a batch are written (and their write-back started) before
any is fsynced, and then all of them and their directories are fsynced side by side
(``sync_all``), so the batch shares journal commits and device flushes instead of paying
one each. Descriptors stay open from write to fsync: a build holds six (five files and its
directory).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path

from dpd.spool.atomic import create_file, fsync_all, open_directory
from dpd.spool.layout import NEW_JOB_PREFIX

FileSpec = tuple[str, bytes, int]  # name, content, mode


class JobDirBuild:
    """``start`` (mkdir, write the files) → ``sync_all`` → ``place``; ``discard`` on
    failure."""

    def __init__(self, jobs: Path | str, task_id: str) -> None:
        # Plain strings: this runs for every accepted job, and pathlib's joins cost more
        # than the system calls they name.
        self.building = os.path.join(jobs, f"{NEW_JOB_PREFIX}{task_id}-{secrets.token_hex(4)}")
        self.final = os.path.join(jobs, task_id)
        self.placed = False
        self._fds: list[int] = []

    @classmethod
    def start(cls, jobs: Path | str, task_id: str, files: Sequence[FileSpec]) -> JobDirBuild:
        """Create the ``.new-*`` directory and write ``files`` into it, not yet fsynced."""
        build = cls(jobs, task_id)
        os.mkdir(build.building, 0o2750)
        try:
            build._fds.append(open_directory(build.building))
            for name, data, mode in files:
                build._fds.append(create_file(os.path.join(build.building, name), data, mode))
        except BaseException:
            build.discard()
            raise
        return build

    @staticmethod
    def sync_all(builds: Sequence[JobDirBuild]) -> None:
        """fsync the files and directories of ``builds``, all at once, and close them;
        DurabilityError if any fails (the builds must then be discarded)."""
        fds = [fd for build in builds for fd in build._fds]
        try:
            fsync_all(fds)
        finally:
            for build in builds:
                build._close()

    def place(self) -> bool:
        """Rename the synced directory to its final name. False, and the build removed, if
        a job directory of that name exists already; other errors propagate."""
        try:
            os.rename(self.building, self.final)
        except OSError as err:
            if err.errno in (errno.ENOTEMPTY, errno.EEXIST):
                self.discard()
                return False
            raise
        self.placed = True
        return True

    def discard(self) -> None:
        """Close what is still open and remove the directory unless it was placed."""
        self._close()
        if not self.placed:
            shutil.rmtree(self.building, ignore_errors=True)

    def _close(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
