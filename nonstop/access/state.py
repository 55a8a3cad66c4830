"""ConnAccess: what one connection was granted and what the hook server is still owed, as plain data.

It is the connection's "access" snapshot key, so it moves with the connection in an upgrade's handover:
  - `connected`: on_connect was asked; exactly one on_close is owed when the client leaves;
  - `publishing` / `playing`: on_publish / on_play allowed (with hooks on); one on_unpublish / on_stop is owed
    when the client stops or leaves;
  - `pending`: a publish or play waiting for its verdict, with the verdict once known, so a new worker that
    receives the connection mid-question acts on the answer, or asks again if it came too late for the
    snapshot (the only case where the hook server may hear a question twice).
Leaving the old worker in a handover sends nothing: the owed notifications travel with the connection and
are sent once, by whichever worker sees the client go. A config reload keeps every granted verdict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass
class ConnAccess:
    cid: str = ""
    # The worker that first asked for this client: every later body names the same one, so a hook server that
    # pairs on_publish with on_unpublish by server_id sees no upgrade (each worker has its own ids).
    server_id: str = ""
    service_id: str = ""
    ip: str = ""
    vhost: str = ""
    app: str = ""
    tc_url: str = ""
    stream: str = ""
    param: str = ""             # "?k=v", as SRS's req->param
    page_url: str = ""
    stream_id: str = ""         # the source's id once known (SRS's stream_id), kept for the last notifications
    connected: bool = False
    publishing: bool = False
    playing: bool = False
    granted: str = ""           # "publish" / "play": the last verdict given (for logs and the API)
    pending: dict | None = None

    def snapshot(self) -> dict:
        return asdict(self)

    @classmethod
    def restore(cls, snap) -> "ConnAccess":
        """From a snapshot; a snapshot from a worker that knew nothing of access (None) owes nothing."""
        if not isinstance(snap, dict):
            return cls()
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in snap.items() if k in names})
