"""Access control: who may publish and play (issue 12).

    rules.py    SRS's `security` allow/deny rules and `refer` page-URL checks: pure functions
    signed.py   nonstop's signed stream URLs: the token format, signing and checking (pure)
    hooks.py    SRS's http_hooks on the wire: the JSON bodies, the answer rule, the aiohttp client
    state.py    what one connection was granted and what it is still owed (on_stop, on_close...): plain data
                that travels in the connection's handover snapshot
    gate.py     Access: the worker's one entry point; connections ask it once per publish or play

A verdict is asked for once per connection and kept in its ConnAccess, so a handover to a new worker or a
config reload never asks again, and the notifications owed (on_unpublish, on_stop, on_close) are sent once,
when the client finally leaves.
"""
