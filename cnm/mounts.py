"""What the kernel says is mounted where: ``/proc/PID/mountinfo``, read once.

:func:`cnm.gc` acts on paths only after the kernel confirmed what they are:
a sandbox directory only if the mount there is a tmpfs cnm made (source
``cnm``), a namespace file only if the mount there is an ``nsfs`` bind
mount. Never from the path alone: a symlink or a mount of someone else's
can sit at a path that looks like cnm's.

The nsfs entries also say which namespace each bind mount holds (the root
field reads ``net:[INODE]``), wherever it is mounted (``/tmp/ns1`` as much
as ``/run/netns``): how gc finds a namespace that cnm did not mount.
"""

from __future__ import annotations

import os
import re

import attrs

__all__ = ["CNM_TMPFS_SOURCE", "Mount", "mounted_at", "read_mounts"]

#: the tmpfs source cnm gives its sandbox directories (see cnm.netns.MountDir)
CNM_TMPFS_SOURCE = "cnm"

_ESCAPE = re.compile(r"\\([0-7]{3})")
_NET_ROOT = re.compile(r"^net:\[(\d+)\]$")


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


@attrs.frozen
class Mount:
    """One line of mountinfo."""

    #: where it is mounted, as this process's mount namespace sees it
    point: str
    #: the path inside the mounted filesystem (for an nsfs mount: ``net:[INODE]``)
    root: str
    fstype: str
    source: str
    #: the device of the mounted filesystem (``st_dev`` of files on it)
    dev: int

    @property
    def net_inode(self) -> int | None:
        """The inode of the network namespace this nsfs mount holds, else None."""
        if self.fstype != "nsfs":
            return None
        found = _NET_ROOT.match(self.root)
        return int(found.group(1)) if found else None

    @property
    def cnm_tmpfs(self) -> bool:
        """A tmpfs of the kind cnm mounts for a host's sandboxes."""
        return self.fstype == "tmpfs" and self.source == CNM_TMPFS_SOURCE


def read_mounts(pid: int | str = "self") -> list[Mount]:
    """Every mount of *pid*'s mount namespace, in mount order (later ones on top)."""
    found: list[Mount] = []
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            fields = line.split()
            dash = fields.index("-", 6)
            major, minor = fields[2].split(":")
            found.append(
                Mount(
                    point=_unescape(fields[4]),
                    root=_unescape(fields[3]),
                    fstype=fields[dash + 1],
                    source=_unescape(fields[dash + 2]),
                    dev=os.makedev(int(major), int(minor)),
                )
            )
    return found


def mounted_at(mounts: list[Mount], path: str) -> list[Mount]:
    """The mounts whose mount point is exactly *path* (stacked ones too)."""
    return [m for m in mounts if m.point == path]
