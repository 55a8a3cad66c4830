"""LL-HLS glass-to-glass latency with hls.js in lowLatencyMode (headless Chromium), several runs per hls_part.

Usage: .venv/bin/python bench/ll_latency.py [--parts 0.5,0.33,1.0] [--runs 5] [--seconds 20] [--catch-up]
                                            [--out FILE]

Each run starts a fresh nonstop (`hls { hls_fragment 2; hls_use_fmp4 on; hls_part P; }`), a live publisher that
draws the wall clock into each frame before x264 encodes it, and a fresh Chromium playing the playlist with hls.js
(default config but `lowLatencyMode: true`; with --catch-up also `maxLiveSyncPlaybackRate: 1.5`, so that hls.js
speeds up to reach its target latency, PART-HOLD-BACK, instead of staying where its start left it); after 1 s of playback it reads, for `--seconds` s, the clock back
from every frame Chromium presents and subtracts it from the time Chromium expects to display the frame.
tests/glass.py says exactly what the figure covers. Prints a table and writes JSON (per run: the per-frame
summary, hls.js's own PDT-based figure, frames, stalls, errors; the load average before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import glass  # noqa: E402
from tests.helpers import Server, stop_proc, wait_for  # noqa: E402


def _get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.read()
    except OSError:
        return b""


def one_run(part: float, seconds: float, config: str) -> dict:
    body = (f"hls {{ enabled on; hls_fragment 2; hls_window 12; hls_dispose 30; hls_use_fmp4 on; "
            f"hls_part {part}; }}")
    with Server(vhost_body=body) as server:
        pub = glass.publish_clock(server.rtmp_url())
        try:
            url = f"http://127.0.0.1:{server.http_port}/live/livestream.m3u8"
            wait_for(lambda: b"#EXT-X-PART:" in _get(url + "?hls_ctx=bench"), 30, interval=0.1,
                     what="an LL-HLS playlist")
            load_before = os.getloadavg()
            result = glass.measure(url, seconds, config=config)
            result["load_before"], result["load_after"] = load_before, os.getloadavg()
        finally:
            stop_proc(pub)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="0.5,0.33,1.0")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--catch-up", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    if not args.out:
        name = "result-catch-up.json" if args.catch_up else "result.json"
        args.out = str(ROOT / "bench" / "runs" / f"ll-latency-{time.strftime('%Y%m%d')}" / name)
    config = "{lowLatencyMode: true" + (", maxLiveSyncPlaybackRate: 1.5" if args.catch_up else "") + "}"
    results: dict[str, list] = {}
    for part in [float(p) for p in args.parts.split(",")]:
        for i in range(args.runs):
            r = one_run(part, args.seconds, config)
            results.setdefault(str(part), []).append(r)
            g = r["glass_ms"]
            print(f"hls_part {part}: run {i + 1}: glass median {g.get('median')} ms, max {g.get('max')} ms "
                  f"({g['n']} frames), PDT median {r['hlsjs_playing_date_ms'].get('median')} ms, "
                  f"{r['decoded']} decoded in {r['wall_s']:.1f} s, {r['waiting']} stalls, errors {r['errors']}, "
                  f"load {r['load_before'][0]:.2f}->{r['load_after'][0]:.2f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"argv": sys.argv, "hlsjs_config": config, "runs": results}, indent=1))
    print("\n| hls_part | runs | glass-to-glass median of run medians | best run median | worst run median "
          "| worst frame | hls.js PDT median | stalls | errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    for part, runs in results.items():
        medians = [r["glass_ms"]["median"] for r in runs if r["glass_ms"]["n"]]
        worst = max(r["glass_ms"]["max"] for r in runs if r["glass_ms"]["n"])
        pdt = statistics.median(r["hlsjs_playing_date_ms"]["median"] for r in runs
                                if r["hlsjs_playing_date_ms"]["n"])
        print(f"| {part} s | {len(runs)} | {statistics.median(medians):.0f} ms | {min(medians):.0f} ms "
              f"| {max(medians):.0f} ms | {worst:.0f} ms | {pdt:.0f} ms | {sum(r['waiting'] for r in runs)} "
              f"| {sum(len(r['errors']) for r in runs)} |")
    print(f"\nJSON: {out}")


if __name__ == "__main__":
    main()
