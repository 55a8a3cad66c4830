"""The load generator's report: the processes' results merged into one dict (`--json`), or read as text.

Units: rates in kb/s (1000 bits), times in ms, memory in KB (1024 bytes), CPU in seconds; a GB of delivered
data is 10**9 bytes. "Delivered" is what the players received during the window, headers included.
"""

from __future__ import annotations

import statistics

from nonstop.bench.churn import churn_outcome_name
from nonstop.bench.stats import LatencyHistogram, summary

REPORT_VERSION = 1
# A player whose rate over the window is below this fraction of the stream's rate is starved. Flushes come
# every few hundred ms, so a 20 s window measures a healthy player within about 2% of the stream.
STARVED_FRACTION = 0.9
GB = 1e9


def _round(value, digits: int = 1):
    return None if value is None else round(value, digits)


def build(opts, media, results: list[dict], samples: dict, schedule: dict) -> dict:
    """Merge the per-process results of one run into the report."""
    window = schedule["window_end"] - schedule["window_start"]
    players = [p for r in results for p in r["players"]]
    publishers = [p for r in results for p in r["publishers"]]
    latency = LatencyHistogram()
    for r in results:
        latency.merge_dict(r["latency"])

    stream_kbps, stream_source = None, None
    if publishers and window > 0:
        stream_kbps = sum(p["payload_bytes_window"] for p in publishers) * 8 / 1000 / window / len(publishers)
        stream_source = "publishers"
    elif opts.stream_kbps:
        stream_kbps, stream_source = opts.stream_kbps, "option"

    rates = [p["bytes"] * 8 / 1000 / window for p in players] if window > 0 else []
    delivered = sum(p["bytes"] for p in players)
    failed: dict[str, int] = {}
    for r in results:
        for kind, n in r["connections"]["failed"].items():
            failed[kind] = failed.get(kind, 0) + n
    gaps = [g for p in players for g in p["reconnect_gaps"]]
    ttffs = [p["ttff"] for p in players if p["ttff"] is not None]

    out = {
        "version": REPORT_VERSION,
        "target": opts.target.url if opts.target else None,
        "protocol": None if opts.target is None else "rtmp" if opts.target.is_rtmp else "http-flv",
        "config": {"players": opts.players, "publishers": opts.publishers, "procs": opts.procs, "ramp": opts.ramp,
                   "duration_s": opts.duration, "warmup_s": opts.warmup, "reconnect": opts.reconnect,
                   "reconnecting": opts.reconnecting, "hangup_every_s": opts.hangup_every, "idle": opts.idle,
                   "churn": opts.churn, "rcvlowat": opts.rcvlowat, "stall_threshold_s": opts.stall_threshold,
                   "hole_ms": opts.hole_ms, "file": opts.file},
        "window": {"start": schedule["window_start"], "end": schedule["window_end"], "seconds": window},
        "stream": {"kbps": _round(stream_kbps), "source": stream_source,
                   "file_kbps": _round(media.kbps) if media else None,
                   "video_frames_in_file": media.video_frames if media else None,
                   "ambiguous_frames_in_file": media.ambiguous if media else None},
        "connections": {"attempts": sum(r["connections"]["attempts"] for r in results),
                        "ok": sum(r["connections"]["ok"] for r in results),
                        "failed": sum(failed.values()), "failed_by_kind": failed,
                        "dropped": sum(r["connections"]["dropped"] for r in results),
                        "hangups": sum(r["connections"]["hangups"] for r in results),
                        "playing_at_end": sum(r["playing_at_end"] for r in results)},
        "players": _players(players, rates, stream_kbps, ttffs, delivered, opts),
        "reconnects": {"count": sum(p["reconnects"] for p in players), "gap_ms": summary(gaps, 1000)},
        "latency_ms": {"samples": latency.count,
                       "players": sum(r["latency_players"] for r in results),
                       "p50": _ms(latency.percentile(50)), "p99": _ms(latency.percentile(99)),
                       "max": _ms(latency.max()),
                       "unmatched": sum(r["latency_unmatched"] for r in results)},
        "publishers": {"count": len(publishers), "ok": sum(1 for p in publishers if p["ok"]),
                       "errors": [p["error"] for p in publishers if p["error"]],
                       "frames_sent": sum(p["frames_sent"] for p in publishers),
                       "max_write_buffer": max((p["max_write_buffer"] for p in publishers), default=0)},
        "churn": _pool([r["churn"] for r in results if r["churn"] is not None], opts.churn),
        "idle": _pool([r["idle"] for r in results if r["idle"] is not None], None),
        "server": _server(samples, window, delivered, opts),
        "bench": _bench(samples, window, opts),
    }
    return out


def _ms(seconds):
    return None if seconds is None else round(seconds * 1000, 1)


def _players(players, rates, stream_kbps, ttffs, delivered, opts) -> dict:
    starved = None
    if stream_kbps:
        starved = sum(1 for r in rates if r < STARVED_FRACTION * stream_kbps)
    return {
        "count": len(players),
        "bytes": delivered,
        "rate_kbps": {"min": _round(min(rates, default=None)),
                      "median": _round(statistics.median(rates)) if rates else None,
                      "max": _round(max(rates, default=None))},
        "rate_ratio_min": _round(min(rates) / stream_kbps, 3) if rates and stream_kbps else None,
        "starved": starved, "starved_below": STARVED_FRACTION,
        "ttff_ms": summary(ttffs, 1000),
        "never_played": len(players) - len(ttffs),
        "stalls": {"max_gap_ms": _ms(max((p["max_gap"] for p in players), default=None)),
                   "median_max_gap_ms": _ms(statistics.median(p["max_gap"] for p in players) if players else None),
                   "threshold_ms": _ms(opts.stall_threshold),
                   "count": sum(p["stalls"] for p in players),
                   "players": sum(1 for p in players if p["stalls"])},
        "timestamps": {"holes": sum(p["holes"] for p in players), "repeats": sum(p["repeats"] for p in players),
                       "frames": sum(p["frames"] for p in players), "hole_ms": opts.hole_ms},
    }


def _pool(parts: list[dict], rate) -> dict | None:
    if not parts:
        return None
    failed: dict[str, int] = {}
    for part in parts:
        for kind, n in part["failed"].items():
            name = churn_outcome_name(kind)
            failed[name] = failed.get(name, 0) + n
    out = {"attempted": sum(p["attempted"] for p in parts), "ok": sum(p["ok"] for p in parts),
           "failed": sum(failed.values()), "refused": failed.get("refused", 0), "reset": failed.get("reset", 0),
           "unanswered": failed.get("unanswered", 0), "rejected": failed.get("rejected", 0),
           "failed_by_kind": failed, "dropped": sum(p["dropped"] for p in parts),
           "connect_ms": summary([t for p in parts for t in p["connect_times"]], 1000)}
    if rate is not None:
        out["rate"] = rate
    else:
        out["open_at_end"] = sum(p.get("open_at_end", 0) for p in parts)
    return out


def _server(samples: dict, window: float, delivered: int, opts) -> dict | None:
    start, end = samples.get("window_start", {}).get("server"), samples.get("window_end", {}).get("server")
    base = samples.get("baseline", {}).get("server")
    if not start or not end:
        return None
    cpu = (end["utime"] + end["stime"]) - (start["utime"] + start["stime"])
    connections = opts.players + opts.idle + opts.publishers  # every connection the server held
    grown = end["rss_kb"] - base["rss_kb"] if base else None
    return {
        "pids": end["pids"],
        "cpu_s": round(cpu, 2), "user_s": round(end["utime"] - start["utime"], 2),
        "sys_s": round(end["stime"] - start["stime"], 2),
        "cpu_pct_of_core": _round(100 * cpu / window) if window > 0 else None,
        "bytes_delivered": delivered,
        "cpu_s_per_gb": round(cpu / (delivered / GB), 3) if delivered else None,
        "rss_kb_baseline": base["rss_kb"] if base else None, "rss_kb_end": end["rss_kb"],
        "rss_kb_per_connection": _round(grown / connections) if grown is not None and connections else None,
    }


def _bench(samples: dict, window: float, opts) -> dict | None:
    start, end = samples.get("window_start"), samples.get("window_end")
    if not start or not end or window <= 0:
        return None
    a, b = start["bench_per_process"], end["bench_per_process"]
    deltas = {pid: b[pid] - a.get(pid, 0.0) for pid in b}
    total = sum(deltas.values())
    return {"processes": opts.procs, "cpu_s": round(total, 2), "cpu_pct_of_core": _round(100 * total / window),
            "max_process_pct": _round(100 * max(deltas.values(), default=0.0) / window)}


# ----- text ------------------------------------------------------------------------------------------------

def _fmt(value, unit: str = "", none: str = "-") -> str:
    if value is None:
        return none
    if isinstance(value, float):
        value = f"{value:g}" if abs(value) >= 100 else f"{value:.3g}" if abs(value) < 1 else f"{value:.1f}"
    return f"{value}{unit}"


def format_text(r: dict) -> str:
    cfg, pl, conn = r["config"], r["players"], r["connections"]
    lines = []
    what = f"{cfg['players']} {r['protocol'] or ''} players of {r['target']}".replace("  ", " ")
    if cfg["publishers"]:
        what += f", {cfg['publishers']} publisher(s) of {cfg['file']}"
    lines.append(f"nonstop bench: {what}, {cfg['procs']} process(es)")
    lines.append(f"window         {r['window']['seconds']:.1f} s; stream {_fmt(r['stream']['kbps'], ' kb/s')}"
                 f" ({r['stream']['source'] or 'unknown'})")
    failed = ", ".join(f"{k} {v}" for k, v in sorted(conn["failed_by_kind"].items())) or "none"
    lines.append(f"connections    {conn['ok']} ok of {conn['attempts']} attempts; failed {conn['failed']} ({failed});"
                 f" dropped {conn['dropped']}; playing at the end {conn['playing_at_end']}")
    if pl["count"]:
        rate = pl["rate_kbps"]
        lines.append(f"rate per player min {_fmt(rate['min'])} / median {_fmt(rate['median'])} / max "
                     f"{_fmt(rate['max'])} kb/s; starved (< {pl['starved_below']:.0%} of the stream) "
                     f"{_fmt(pl['starved'])}")
        t = pl["ttff_ms"]
        lines.append(f"first frame    p50 {_fmt(t['p50'], ' ms')}, p99 {_fmt(t['p99'], ' ms')}, max "
                     f"{_fmt(t['max'], ' ms')}; never played {pl['never_played']}")
        st, ts = pl["stalls"], pl["timestamps"]
        lines.append(f"stalls         largest gap {_fmt(st['max_gap_ms'], ' ms')}; {st['count']} over "
                     f"{_fmt(st['threshold_ms'], ' ms')} ({st['players']} players)")
        lines.append(f"timestamps     {ts['holes']} holes (> {_fmt(ts['hole_ms'], ' ms')}), {ts['repeats']} repeats,"
                     f" in {ts['frames']} video frames")
    lat = r["latency_ms"]
    if lat["samples"] or lat["players"]:
        lines.append(f"latency        p50 {_fmt(lat['p50'], ' ms')}, p99 {_fmt(lat['p99'], ' ms')}, max "
                     f"{_fmt(lat['max'], ' ms')} ({lat['samples']} samples from {lat['players']} players)")
    rc = r["reconnects"]
    if rc["count"]:
        g = rc["gap_ms"]
        lines.append(f"reconnects     {rc['count']}; gap to the next frame p50 {_fmt(g['p50'], ' ms')}, p99 "
                     f"{_fmt(g['p99'], ' ms')}, max {_fmt(g['max'], ' ms')}")
    for name in ("churn", "idle"):
        c = r[name]
        if c:
            ms = c["connect_ms"]
            lines.append(f"{name:<14} {c['ok']} ok of {c['attempted']}; refused {c['refused']}, reset {c['reset']}, "
                         f"unanswered {c['unanswered']}, rejected {c['rejected']}; connect p50 "
                         f"{_fmt(ms['p50'], ' ms')}, p99 {_fmt(ms['p99'], ' ms')}")
    pub = r["publishers"]
    if pub["count"]:
        lines.append(f"publishers     {pub['ok']} ok of {pub['count']}" +
                     (f"; errors: {'; '.join(pub['errors'])}" if pub["errors"] else ""))
    s = r["server"]
    if s:
        lines.append(f"server         cpu {s['cpu_s']} s ({_fmt(s['cpu_pct_of_core'], '%')} of a core; user "
                     f"{s['user_s']}, sys {s['sys_s']}); {_fmt(s['cpu_s_per_gb'])} CPU-s/GB of "
                     f"{s['bytes_delivered'] / 1e6:.0f} MB; rss {s['rss_kb_end'] / 1024:.1f} MB, "
                     f"{_fmt(s['rss_kb_per_connection'], ' KB')} per connection ({len(s['pids'])} processes)")
    b = r["bench"]
    if b:
        lines.append(f"load generator cpu {b['cpu_s']} s ({_fmt(b['cpu_pct_of_core'], '%')} of a core, busiest "
                     f"process {_fmt(b['max_process_pct'], '%')}), {b['processes']} process(es)")
    return "\n".join(lines) + "\n"
