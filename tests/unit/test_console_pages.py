"""The console's and player's files on the HTTP server port (nonstop/console/pages.py)."""

from types import SimpleNamespace

from nonstop.console import pages


def config(api_port=1985, http_port=8080, api_enabled=True, directory="/nonexistent"):
    listen = lambda port: SimpleNamespace(port=port)    # noqa: E731
    return SimpleNamespace(http_api=SimpleNamespace(enabled=api_enabled, listen=listen(api_port)),
                           http_server=SimpleNamespace(enabled=True, listen=listen(http_port), dir=directory))


def split(response: bytes) -> tuple[str, bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    return head.decode(), body


def test_the_console_and_player_are_served_with_their_types():
    head, body = split(pages.answer("GET", "/console/", config()))
    assert head.startswith("HTTP/1.1 200 OK") and "text/html" in head and b"<html" in body
    head, body = split(pages.answer("GET", "/players/player.js", config()))
    assert "text/javascript" in head and f"Content-Length: {len(body)}" in head
    head, body = split(pages.answer("GET", "/console/vendor/mpegts.js", config()))
    assert "max-age" in head and len(body) > 100_000


def test_the_index_names_the_api_port_or_this_origin():
    _, body = split(pages.answer("GET", "/console/", config()))
    assert b'content=":1985"' in body and pages.API_PLACEHOLDER not in body
    _, body = split(pages.answer("GET", "/console/", config(api_port=8080)))
    assert b'name="nonstop-api" content=""' in body


def test_slash_is_the_console_unless_the_dir_has_an_index(tmp_path):
    assert b"<html" in split(pages.answer("GET", "/", config(directory=str(tmp_path))))[1]
    (tmp_path / "index.html").write_text("mine")
    assert pages.answer("GET", "/", config(directory=str(tmp_path))) is None


def test_only_shipped_files_are_answered():
    for path in ("/console/../__init__.py", "/console/pages.py", "/players/../../pages.py", "/console/nope.js",
                 "/consolex/", "/live/s.flv", "/api/v1/versions", "/console/vendor/../../pages.py"):
        assert pages.answer("GET", path, config()) is None, path


def test_head_has_no_body_and_other_methods_get_405():
    head, body = split(pages.answer("HEAD", "/console/", config()))
    assert head.startswith("HTTP/1.1 200") and body == b""
    head, _ = split(pages.answer("POST", "/console/", config()))
    assert head.startswith("HTTP/1.1 405") and "Allow: GET, HEAD" in head
