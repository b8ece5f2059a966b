"""Secret files: created mode 0600 in one system call, never an existing file.

Every private key, secret context and salt file of the project is written by
:func:`create_secret_file`: ``os.open(path, O_WRONLY | O_CREAT | O_EXCL, 0o600)``
makes the file with its final mode (the process umask can only narrow it),
so there is no moment at which another user could open it, and nothing is
chmodded afterwards. ``O_EXCL`` refuses an existing path, a symbolic link
included, so a secret never lands in a file someone else prepared with a
wider mode.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["create_secret_file"]


def create_secret_file(path: str | os.PathLike[str], data: bytes = b"") -> Path:
    """Write ``data`` to a new file of mode 0600 at ``path`` and fsync it.

    Raises
    ------
    FileExistsError
        ``path`` exists (file or link); it is left untouched.
    OSError
        The file cannot be created or written (a partial file is removed).
    """
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    return path
