"""Upgrades during player churn (issue 10 item 1): the real server as a subprocess, one ffmpeg publisher,
long-lived ffmpeg readers that check every timestamp, short-lived RTMP players churning and probes that hang
up at their first video frame (as ffprobe, thumbnailers and health checks do), through several SIGUSR2
upgrades in a row. On c3acb38 this destroyed the stream (`handed over without its source`) or froze it
(`order handover failed`: AttributeError ... 'fileno'), and later upgrades were refused.
"""

from __future__ import annotations

import asyncio
import random
import re
import threading
import time

import pytest

from nonstop.protocol import rtmp
from tests.e2e.upgrade_helpers import TimedPlayer, UpgradeServer, assert_every_frame_once, play_on_then_quit
from tests.helpers import make_test_flv, publish_file, stop_proc, wait_for
from tests.rtmp_client import RtmpTestClient

pytestmark = pytest.mark.timeout(240)
STREAM = "__defaultVhost__/live/livestream"
# make test: 3 upgrades with 20 short-lived players (0.1-1.5 s) and 10 first-frame probes a second, the readers
# quitting once they have played 2 s past the last upgrade; make test-long: the issue's rates, 40 and 20 a second,
# through 5 upgrades, the readers playing 85 s.
# As in test_upgrade.py: the goal for a reader's worst gap between video frames is 250 ms; asserted with 3x.
GAP_BOUND_S = 0.75


@pytest.fixture(scope="module")
def flv_40s(media_dir):
    """The 40 s file test_upgrade.py and test_hls.py publish too (made once a session): the short run quits its
    readers 2 s after the last upgrade, well within it (about 20 s in on a loaded 2-core machine)."""
    return make_test_flv(media_dir / "upgrade-40s.flv", seconds=40)


@pytest.fixture(scope="module")
def long_flv(media_dir):
    return make_test_flv(media_dir / "upgrade-90s.flv", seconds=90)


class Churn(threading.Thread):
    """Short-lived RTMP players and first-frame probes, from their own event loop."""

    def __init__(self, port: int, players_per_s: float, probes_per_s: float):
        super().__init__(daemon=True)
        self.port = port
        self.players_per_s, self.probes_per_s = players_per_s, probes_per_s
        self.stop = threading.Event()
        self.counts = {"ok": 0, "probes": 0, "no_frame": 0, "failed": 0}
        self.errors: list[str] = []

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        tasks = set()
        rng = random.Random(7)
        next_player = next_probe = time.monotonic()
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= next_player:
                next_player += 1 / self.players_per_s
                tasks.add(asyncio.ensure_future(self._player(rng.uniform(0.1, 1.5))))
            if now >= next_probe:
                next_probe += 1 / self.probes_per_s
                tasks.add(asyncio.ensure_future(self._probe()))
            tasks = {t for t in tasks if not t.done()}
            await asyncio.sleep(0.01)
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _play(self) -> RtmpTestClient:
        client = RtmpTestClient()
        await asyncio.wait_for(client.open(self.port), 5)
        await asyncio.wait_for(client.play("livestream"), 5)
        return client

    async def _player(self, seconds: float) -> None:
        client = None
        try:
            client = await self._play()
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                if not await client.read_once(max(deadline - time.monotonic(), 0.01)):
                    raise ConnectionError("the server closed a churn player")
                client.events.clear()
            self.counts["ok"] += 1
        except asyncio.TimeoutError:
            self.counts["ok"] += 1      # read_once timing out at its deadline: the player simply ends
        except Exception as e:
            self.counts["failed"] += 1
            self.errors.append(f"player: {e!r}")
        finally:
            if client is not None and client.writer is not None:
                client.writer.transport.abort()

    async def _probe(self) -> None:
        client = None
        try:
            client = await self._play()
            await client.wait_for(lambda e: isinstance(e, rtmp.Media) and e.type_id == rtmp.MSG_VIDEO, 5)
            self.counts["probes"] += 1
        except (TimeoutError, asyncio.TimeoutError):
            self.counts["no_frame"] += 1
        except Exception as e:
            self.counts["failed"] += 1
            self.errors.append(f"probe: {e!r}")
        finally:
            if client is not None and client.writer is not None:
                client.writer.transport.abort()     # hang up at once, as ffprobe does


def test_upgrades_during_churn_and_probes_lose_no_reader_no_frame_and_no_stream(flv_40s):
    upgrades_under_churn(flv_40s, upgrades=3, players_per_s=20, probes_per_s=10, reader_s=38, quit_after_s=2)


@pytest.mark.long
@pytest.mark.timeout(400)
def test_five_upgrades_at_the_issues_churn_rates(long_flv):
    upgrades_under_churn(long_flv, upgrades=5, players_per_s=40, probes_per_s=20, reader_s=85)


def upgrades_under_churn(long_flv, upgrades: int, players_per_s: float, probes_per_s: float, reader_s: float,
                         quit_after_s: float | None = None):
    """`reader_s` bounds the readers' play from above (upgrades take 3-10 s each on a loaded machine); with
    `quit_after_s`, the readers end once each has played that many seconds more after the last upgrade, under
    the churn still, instead of playing out `reader_s`: what follows the last upgrade shows no more."""
    server = UpgradeServer(vhost_body="min_latency on;", max_connections=3000).start()
    publisher = publish_file(server.rtmp_url(), long_flv, loop=False)
    readers, churn = [], None
    try:
        wait_for(lambda: f"publish {STREAM}," in server.log(), 15, what="the publisher")
        # Each upgrade takes 3-10 s on a loaded 2-core machine (most of it the `nonstop -t` check).
        readers = [TimedPlayer(server.rtmp_url(), reader_s).start(),
                   TimedPlayer(server.rtmp_url(), reader_s).start(), TimedPlayer(server.flv_url(), reader_s).start()]
        wait_for(lambda: all(r.playing() for r in readers), 20, what="the long-lived readers")
        churn = Churn(server.rtmp_port, players_per_s, probes_per_s)
        churn.start()
        wait_for(lambda: churn.counts["probes"] >= 5, 15, what="probes to see frames")
        lines = []
        for n in range(1, upgrades + 1):
            frames = len(readers[0].arrivals)
            wait_for(lambda: len(readers[0].arrivals) >= frames + 25, 10, what="play between upgrades")
            took = server.upgrade(n)
            line = re.findall(r"upgrade (?:done|rolled_back|failed).*", server.log())[-1]
            lines.append(line)
            print(f"upgrade {n} ({took:.2f}s): {line}")
        if quit_after_s is not None:
            play_on_then_quit(readers, quit_after_s)
        churn.stop.set()
        churn.join(30)
        results = [r.finish(reader_s + 30) for r in readers]
        log = server.log()
        print(f"churn: {churn.counts}; errors: {churn.errors[:5]}")
        gaps = [r.worst_gap() for r in readers]
        print(f"readers: worst gap {[round(g * 1000) for g in gaps]} ms (bound {GAP_BOUND_S * 1000:.0f} ms)")
        for i, result in enumerate(results):
            assert_every_frame_once(result, what=f"reader {i}")
        assert max(gaps) < GAP_BOUND_S, gaps
        assert all(line.startswith("upgrade done") for line in lines), lines
        assert "handed over without its source" not in log
        assert "order handover failed" not in log and "Traceback" not in log
        # The upgrade line is honest: it reports no failure, and nothing was in fact lost.
        for line in lines:
            assert "failed=0" in line, line
        assert re.search(rf"publish {STREAM},", log) and log.count(f"unpublish {STREAM}") == 0, \
            "the stream was destroyed during an upgrade"
        assert churn.counts["failed"] == 0, churn.errors[:10]
        assert churn.counts["ok"] > 10 * upgrades and churn.counts["probes"] > 5 * upgrades, churn.counts
    except BaseException:
        print("\n".join(line for line in server.log().splitlines()
                        if "[Trace]" not in line or "upgrade" in line or "handover" in line)[-8000:])
        raise
    finally:
        if churn is not None:
            churn.stop.set()
        for r in readers:
            r.kill()
        stop_proc(publisher)
        server.stop()
