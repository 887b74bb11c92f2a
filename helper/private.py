"""One rule for the helper's private files and directories (the run records and their
directories, the pinned connection secrets and theirs): a real file or directory, never a
symbolic link, of this user, that nobody else may write to or read. A record or pin planted
by someone else would make the helper stop processes, run commands or trust another secret.
"""

from __future__ import annotations

import os
import stat

PRIVATE_DIRECTORY_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
_OTHERS_WRITE = 0o022
_OTHERS_ANY = 0o077
_SPECIAL_BITS = 0o7000  # setuid, setgid, sticky


def problem(info: os.stat_result, *, directory: bool, others_may_read: bool = False) -> str | None:
    """Why ``info`` (lstat'ed, or fstat'ed after O_NOFOLLOW) is not this user's private
    directory (exactly 0700) or file (nothing for group or others), as a phrase; None if it is.

    ``others_may_read``: a base directory the user chose (``$XDG_RUNTIME_DIR``, ``~/.cache``),
    which others may read and enter, but not write to.
    """
    mode = stat.S_IMODE(info.st_mode)
    if stat.S_ISLNK(info.st_mode):
        return "is a symbolic link"
    if directory and not stat.S_ISDIR(info.st_mode):
        return "is not a directory"
    if not directory and not stat.S_ISREG(info.st_mode):
        return "is not a regular file"
    if info.st_uid != os.getuid():
        return f"belongs to user id {info.st_uid}, not to you ({os.getuid()})"
    must = f"{PRIVATE_DIRECTORY_MODE if directory else PRIVATE_FILE_MODE:04o}"
    if mode & _OTHERS_WRITE:
        return f"has mode {mode:04o} (others may change it; it must be {must})"
    if others_may_read:
        return None
    if (mode != PRIVATE_DIRECTORY_MODE) if directory else (mode & _OTHERS_ANY):
        return f"has mode {mode:04o} (others may read it; it must be {must})"
    return None


def only_too_readable(info: os.stat_result) -> bool:
    """A directory of this user's that others may read or enter but not write to: nothing can
    have been planted there, so ``chmod 0700`` makes it private (earlier helpers made 0755)."""
    return (
        problem(info, directory=True, others_may_read=True) is None
        and problem(info, directory=True) is not None
        and not stat.S_IMODE(info.st_mode) & _SPECIAL_BITS
    )
