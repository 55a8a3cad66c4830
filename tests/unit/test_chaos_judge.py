"""The chaos harness's judgement (tests/e2e/chaos.py) on made-up client reports: it must catch each fault it is
meant to catch, name the reader and the phase, and excuse only what the kill -9 and SIGSTOP windows allow.
(A chaos test that cannot fail proves nothing, and on the server today it can only be seen failing.)"""

from __future__ import annotations

import pytest

from tests.e2e.chaos import FRAME_MS, Chaos, ChaosPlan, Window


class FakeProc:
    returncode = None

    def poll(self):
        return None


class FakeClient:
    def __init__(self, name: str, lines: list[str]):
        self.name = name
        self.lines = [line.split() for line in lines]
        self.proc = FakeProc()
        self.cpu_s = 0.0

    def events(self, kind: str):
        return [w for w in self.lines if w[0] == kind]

    def stderr_tail(self, n: int = 0) -> str:
        return ""


def stream(start: float, end: float, ts0: int = 0, skip_at: float | None = None, repeat_at: float | None = None,
           pause: tuple[float, float] | None = None) -> list[str]:
    """A reader's lines: one video frame every 40 ms (and audio between), with one chosen fault."""
    lines = [f"conn {start - 0.1:.6f}", f"play {start - 0.05:.6f} NetStream.Play.Start"]
    t, ts, ats = start, ts0, ts0
    while t < end:
        if pause and pause[0] <= t < pause[1]:
            t = pause[1]
        lines.append(f"v {t:.6f} {ts}")
        while ats <= ts:
            lines.append(f"a {t:.6f} {round(ats)}")
            ats += 1024 / 44.1
        if skip_at is not None and abs(t - skip_at) < 0.02:
            ts += FRAME_MS        # one frame never arrives
        if not (repeat_at is not None and abs(t - repeat_at) < 0.02):
            ts += FRAME_MS        # at repeat_at the next frame carries the same timestamp
        t += FRAME_MS / 1000
    return lines


@pytest.fixture
def chaos(tmp_path):
    run = Chaos(ChaosPlan(), tmp_path)
    run.t0, run.t_measure, run.t_end = 0.0, 1.0, 40.0
    run.phases = [("churn", 1.0), ("upgrade 1", 10.0), ("kill -9", 15.0), ("after kill -9", 18.0),
                  ("SIGSTOP", 20.0), ("after SIGCONT", 26.0)]
    run.windows = [Window("kill", 15.0, 17.0), Window("sigstop", 20.0, 26.0)]
    return run


def judge(run: Chaos, readers: list[FakeClient], churn: list[str] = ()):
    run.readers = readers
    run.churn = FakeClient("churn", list(churn))
    return run.analyze()


def test_a_clean_run_passes_and_the_sigstop_gap_is_excluded_but_printed(chaos):
    result = judge(chaos, [FakeClient("reader-rtmp-0", stream(0.5, 40, pause=(20.0, 26.3)))],
                   ["c 2.0 2.5 player rtmp ok 0.50s", "c 3.0 3.2 probe flv ok first-frame"])
    print(result.report())
    assert result.failures == []
    assert any("sigstop: 63" in line for line in result.lines), result.lines


def test_a_lost_frame_is_named_with_its_reader_timestamps_and_phase(chaos):
    result = judge(chaos, [FakeClient("reader-flv-1", stream(0.5, 40, skip_at=12.0))])
    assert len(result.failures) == 1
    failure = result.failures[0]
    assert failure.startswith("reader-flv-1: 1 lost or repeated frames") and "lost 1 frame(s)" in failure
    assert "phase 'upgrade 1'" in failure


def test_a_repeated_frame_fails(chaos):
    result = judge(chaos, [FakeClient("reader-rtmp-1", stream(0.5, 40, repeat_at=30.0))])
    assert len(result.failures) == 1 and "a repeated or earlier frame" in result.failures[0]
    assert "phase 'after SIGCONT'" in result.failures[0]


def test_a_gap_over_the_bound_outside_the_windows_fails(chaos):
    result = judge(chaos, [FakeClient("reader-rtmp-0", stream(0.5, 40, pause=(11.0, 11.5)))])
    assert len(result.failures) == 1, result.failures
    assert "reader-rtmp-0" in result.failures[0] and "phase 'upgrade 1'" in result.failures[0]
    assert result.failures[0].startswith("gap of 5")


def test_a_gap_just_under_the_bound_passes(chaos):
    result = judge(chaos, [FakeClient("reader-rtmp-0", stream(0.5, 40, pause=(11.0, 11.32)))])
    assert result.failures == []


def test_a_disconnect_is_excused_only_inside_the_kill_window(chaos):
    inside = stream(0.5, 15.2) + ["end 15.3 eof"] + stream(16.0, 40, ts0=0)
    outside = stream(0.5, 12.0) + ["end 12.1 eof"] + stream(12.3, 40, ts0=0)
    result = judge(chaos, [FakeClient("reader-rtmp-0", inside), FakeClient("reader-flv-0", outside)])
    assert result.failures == ["reader-flv-0 disconnected 1 time(s) outside the kill windows: eof at +12.10s in "
                               "phase 'upgrade 1'"]


def test_churn_failures_count_except_those_overlapping_a_kill_window(chaos):
    churn = ["c 2.0 2.5 player rtmp ok 0.50s", "c 11.0 11.1 probe flv rejected http-404",
             "c 14.9 15.1 player rtmp dropped server-closed", "c 16.0 16.1 probe flv rejected http-404",
             "c 21.0 26.5 probe rtmp timeout not-playing", "c 27.0 27.1 player flv reset connect"]
    churn += [f"c {t}.0 {t}.5 probe rtmp ok first-frame" for t in range(28, 35)]
    result = judge(chaos, [FakeClient("reader-rtmp-0", stream(0.5, 40, pause=(20.0, 26.3)))], churn)
    assert len(result.failures) == 1, result.failures
    failure = result.failures[0]
    assert failure.startswith("3 churn attempts failed outside the kill windows")
    assert "'upgrade 1': {'probe/flv/rejected': 1}" in failure and "'after SIGCONT': {'player/flv/reset': 1}" in failure
    assert "'SIGSTOP': {'probe/rtmp/timeout': 1}" in failure


def test_too_few_churn_attempts_playing_fails(chaos):
    churn = ["c 2.0 2.5 player rtmp ok 0.50s"] + [f"c {t}.0 {t}.1 player flv early 0.10s" for t in range(3, 9)]
    result = judge(chaos, [FakeClient("reader-rtmp-0", stream(0.5, 40, pause=(20.0, 26.3)))], churn)
    assert result.failures == ["only 1 of 7 churn attempts played"]


def test_a_publisher_exit_is_excused_only_inside_the_kill_window(chaos):
    class FakePublisher:
        starts = [0.0, 15.2, 27.0]
        exits = [(15.1, 1, "Error writing trailer: Broken pipe"), (26.9, 1, "x\nConnection reset by peer")]
    chaos.publisher = FakePublisher()
    result = judge(chaos, [FakeClient("reader-rtmp-0", stream(0.5, 40, pause=(20.0, 26.3)))])
    assert result.failures == ["the publisher was disconnected 1 time(s) outside the kill windows: at +26.90s in "
                               "phase 'after SIGCONT' (ffmpeg exit 1: Connection reset by peer)"]


def test_the_flv_readers_body_parser_reads_a_chunked_body_fed_byte_by_byte():
    """HTTP-FLV answers are chunked since issue 11: the readers' parser must cross every chunk boundary (the
    CRLF after a chunk's data once sent it into a busy loop that never yielded a tag)."""
    import struct
    from tests.e2e.chaos_clients import FlvBody
    header = b"FLV\x01\x05\x00\x00\x00\x09" + b"\x00\x00\x00\x00"
    tags = b"".join(bytes([9]) + (5).to_bytes(3, "big") + (ts).to_bytes(3, "big") + b"\x00\x00\x00\x00"
                    + b"\x17\x01abc" + struct.pack(">I", 16) for ts in (0, 40, 80))
    data = header + tags
    parts = (data[:7], data[7:20], data[20:50], data[50:])
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts)
    parser, got = FlvBody(chunked=True), []
    for i in range(len(body)):
        got += parser.feed(body[i:i + 1])
    assert [(t, ts) for t, ts, _ in got] == [(9, 0), (9, 40), (9, 80)]
    with pytest.raises(EOFError):
        parser.feed(b"0\r\n\r\n")
