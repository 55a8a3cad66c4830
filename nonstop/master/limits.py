"""The open-file limit: one fd per connection, so a server raises its soft limit to the hard one at start.

Here rather than with the serving code so that the master, which imports no media code, can raise it too;
its workers inherit the raised limit.
"""

from __future__ import annotations

import resource

from nonstop.log import log

# Besides one fd per connection, a process needs fds for listeners, logs, pipes and the handover socket.
FD_MARGIN = 128


def raise_nofile_limit(max_connections: int) -> None:
    """Raise the soft open-file limit to the hard one; warn when max_connections cannot fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:
            log.warn("main", f"cannot raise the open-file limit from {soft} to {hard}: {e}")
    limit = soft if soft != resource.RLIM_INFINITY else 1 << 30
    if max_connections + FD_MARGIN > limit:
        log.warn("main", f"max_connections {max_connections} plus a margin of {FD_MARGIN} fds does not fit the "
                         f"open-file limit {limit}; raise it (ulimit -n, LimitNOFILE=)")
