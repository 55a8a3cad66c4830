"""Turn one benchmark run (bench/out/run-*/ JSON) into bench/RESULTS.md tables and one PNG per scenario.

Usage: bench/report.py [RUN_DIR]   (default: the newest bench/out/run-*)

RESULTS.md keeps its hand-written text; only the part between the GENERATED markers is replaced. The plots
go next to it (bench/fanout.png, ingest.png, idle.png, latency.png).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "RESULTS.md"
BEGIN = "<!-- GENERATED: bench/report.py writes from here -->"
END = "<!-- GENERATED: to here -->"
SERVER_ORDER = {"nonstop": 0, "nginx-rtmp": 1, "nms": 2}
SERVER_TITLE = {"nonstop": "nonstop", "nginx-rtmp": "nginx-rtmp", "nms": "Node-Media-Server"}


def load(run_dir: Path) -> tuple[dict, list[dict]]:
    meta = json.loads((run_dir / "run.json").read_text())
    points = []
    for path in sorted(run_dir.glob("*.json")):
        if path.name != "run.json":
            points.append(json.loads(path.read_text()))
    return meta, points


def _n(label: str) -> int:
    return int(label.rsplit("-", 1)[1])


def _proto(p: dict) -> str:
    return p["label"].rsplit("-", 1)[0]


def _key(p: dict):
    proto = _proto(p)
    return (SERVER_ORDER.get(p["server_name"], 9), {"rtmp": 0, "flv": 1}.get(proto, 2), proto, _n(p["label"]))


def _f(value, fmt: str = "{:.2f}", none: str = "–") -> str:
    return none if value is None else fmt.format(value)


def _nginx_cpu_per_gb(points: list[dict], scenario: str, label: str) -> float | None:
    for p in points:
        if p["scenario"] == scenario and p["server_name"] == "nginx-rtmp" and p["label"] == label and "error" not in p:
            return (p.get("server") or {}).get("cpu_s_per_gb")
    return None


def kb_per_connection(p: dict) -> float | None:
    """RSS growth from the baseline (taken once the publishers were up) over every connection the server held:
    players, idle connections and publishers."""
    s, c = p.get("server") or {}, p["config"]
    conns = c["players"] + c["idle"] + c["publishers"]
    if s.get("rss_kb_baseline") is None or not conns:
        return None
    return (s["rss_kb_end"] - s["rss_kb_baseline"]) / conns


def _failed(p: dict) -> str:
    kinds = p["connections"]["failed_by_kind"]
    return str(p["connections"]["failed"]) + (f" ({', '.join(f'{k} {v}' for k, v in kinds.items())})"
                                               if kinds else "")


def media_table(points: list[dict], scenario: str) -> list[str]:
    rows = ["| server | protocol | players | connected / failed | starved (< 90%) | min rate / stream | "
            "server CPU % of a core | **CPU-s per GB** | × nginx-rtmp | RSS MB | KB RSS per connection | "
            "load generator CPU % |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in sorted((p for p in points if p["scenario"] == scenario), key=_key):
        name = SERVER_TITLE.get(p["server_name"], p["server_name"])
        if "error" in p:
            rows.append(f"| {name} | {_proto(p)} | {_n(p['label'])} | run failed: {p['error'][:120]} "
                        "| | | | | | | | |")
            continue
        s, pl, b = p.get("server") or {}, p["players"], p.get("bench") or {}
        ngx = _nginx_cpu_per_gb(points, scenario, "rtmp-" + p["label"].rsplit("-", 1)[1])
        ratio = s.get("cpu_s_per_gb") / ngx if ngx and s.get("cpu_s_per_gb") else None
        pub = p["publishers"]
        starved = str(pl["starved"]) + (f" ⚠ {pub['count'] - pub['ok']} publisher(s) lost: {pub['errors'][0]}"
                                        if pub["ok"] < pub["count"] else "")
        rows.append(
            f"| {name} | {_proto(p)} | {pl['count']} | {p['connections']['ok']} / {_failed(p)} | {starved} | "
            f"{_f(pl['rate_ratio_min'], '{:.3f}')} | {_f(s.get('cpu_pct_of_core'), '{:.1f}')} | "
            f"**{_f(s.get('cpu_s_per_gb'))}** | {_f(ratio)} | {_f(s.get('rss_kb_end', 0) / 1024, '{:.0f}')} | "
            f"{_f(kb_per_connection(p), '{:.1f}')} | {_f(b.get('cpu_pct_of_core'), '{:.0f}')} |")
    return rows


def idle_table(points: list[dict]) -> list[str]:
    rows = ["| server | connections ok / attempted | failed | dropped | RSS MB at end | **KB RSS per connection** | "
            "server CPU % of a core while idle | connect p50 / p99 ms |", "|---|---|---|---|---|---|---|---|"]
    for p in sorted((p for p in points if p["scenario"] == "idle"), key=_key):
        name = SERVER_TITLE.get(p["server_name"], p["server_name"])
        if "error" in p:
            rows.append(f"| {name} | run failed: {p['error'][:120]} | | | | | | |")
            continue
        s, idle = p.get("server") or {}, p["idle"] or {}
        ms = idle.get("connect_ms", {})
        rows.append(f"| {name} | {idle.get('ok')} / {idle.get('attempted')} | {idle.get('failed')} | "
                    f"{idle.get('dropped')} | {_f(s.get('rss_kb_end', 0) / 1024, '{:.0f}')} | "
                    f"**{_f(kb_per_connection(p), '{:.1f}')}** | {_f(s.get('cpu_pct_of_core'), '{:.1f}')} | "
                    f"{_f(ms.get('p50'), '{:.1f}')} / {_f(ms.get('p99'), '{:.1f}')} |")
    return rows


def latency_table(points: list[dict]) -> list[str]:
    rows = ["| server | mode | players | **p50 ms** | **p99 ms** | max ms | samples | starved | "
            "largest frame gap ms |", "|---|---|---|---|---|---|---|---|---|"]
    for p in sorted((p for p in points if p["scenario"] == "latency"), key=_key):
        name = SERVER_TITLE.get(p["server_name"], p["server_name"])
        mode = _proto(p)
        if "error" in p:
            rows.append(f"| {name} | {mode} | | run failed: {p['error'][:120]} | | | | | |")
            continue
        lat, pl = p["latency_ms"], p["players"]
        rows.append(f"| {name} | {mode} | {pl['count']} | **{_f(lat['p50'], '{:.0f}')}** | "
                    f"**{_f(lat['p99'], '{:.0f}')}** | {_f(lat['max'], '{:.0f}')} | {lat['samples']} | "
                    f"{pl['starved']} | {_f(pl['stalls']['max_gap_ms'], '{:.0f}')} |")
    return rows


def plots(points: list[dict]) -> dict[str, str]:
    try:
        import matplotlib
    except ImportError:  # the `bench` extra is not installed: tables only
        print("matplotlib is not installed (pip install -e '.[bench]'): no plots", file=sys.stderr)
        return {}
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = {}
    ok = [p for p in points if "error" not in p and p.get("server")]
    for scenario in ("fanout", "ingest"):
        series: dict[str, list] = {}
        for p in sorted((p for p in ok if p["scenario"] == scenario), key=_key):
            if p["server"].get("cpu_s_per_gb") is None:
                continue
            label = f"{SERVER_TITLE[p['server_name']]} {_proto(p).upper().replace('FLV', 'HTTP-FLV')}"
            series.setdefault(label, []).append((p["players"]["count"], p["server"]["cpu_s_per_gb"]))
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for label, xy in series.items():
            xs, ys = zip(*xy)
            ax.plot(xs, ys, marker="o", label=label)
        ax.set_xlabel("players")
        ax.set_ylabel("server CPU-s per GB delivered")
        ax.set_title({"fanout": "Fan-out: 1 publisher of 2 Mb/s 720p30", "ingest": "Ingest: 500 kb/s publishers, "
                      "one player each"}[scenario])
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(BENCH / f"{scenario}.png", dpi=100)
        plt.close(fig)
        made[scenario] = f"{scenario}.png"
    idle = sorted((p for p in ok if p["scenario"] == "idle"), key=_key)
    if idle:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        names = [SERVER_TITLE[p["server_name"]] for p in idle]
        ax.bar(names, [kb_per_connection(p) or 0 for p in idle])
        ax.set_ylabel("KB RSS per idle connection")
        ax.set_title(f"Idle cost: {idle[0]['config']['idle']} connections (connect + createStream)")
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(BENCH / "idle.png", dpi=100)
        plt.close(fig)
        made["idle"] = "idle.png"
    lat = sorted((p for p in ok if p["scenario"] == "latency"), key=_key)
    if lat:
        fig, ax = plt.subplots(figsize=(7, 3.8))
        names = [f"{SERVER_TITLE[p['server_name']]}\n{_proto(p)}" for p in lat]
        xs = range(len(lat))
        ax.bar([x - 0.2 for x in xs], [p["latency_ms"]["p50"] or 0 for p in lat], width=0.4, label="p50")
        ax.bar([x + 0.2 for x in xs], [p["latency_ms"]["p99"] or 0 for p in lat], width=0.4, label="p99")
        ax.set_xticks(list(xs), names)
        ax.set_ylabel("publisher to player latency, ms")
        ax.set_title("Latency at 100 RTMP players")
        ax.grid(axis="y", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(BENCH / "latency.png", dpi=100)
        plt.close(fig)
        made["latency"] = "latency.png"
    return made


def generated(meta: dict, points: list[dict], run_dir: Path, with_plots: bool = True) -> str:
    images = plots(points) if with_plots else {}
    v, m = meta["versions"], meta["machine"]
    lines = [BEGIN, "",
             f"Run `{run_dir.name}` (UTC {meta['started']} to {meta.get('finished', '?')}), command: "
             f"`{meta['command']}`.", "",
             f"- Machine: {m['cpus']} × {m['cpu']}, Linux {m['kernel']}; load average at start "
             f"{', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}"
             + (f", at end {', '.join(f'{x:.2f}' for x in m['loadavg_at_end'])}" if "loadavg_at_end" in m else "")
             + (f". {meta['note']}." if meta.get("note") else "."),
             f"- Servers: nonstop {v['nonstop']} (Python {v['python']}); {v['nginx']} with libnginx-mod-rtmp "
             f"{v['libnginx-mod-rtmp']}; Node-Media-Server {v['node-media-server']} on Node {v['node']}.",
             f"- Window {meta['window_s']:g} s per point; each point starts its server fresh; stream files: "
             f"{meta['files']['main']}" + (f", {meta['files']['ingest']}" if meta["files"].get("ingest") else "")
             + ".", ""]
    scenarios = {p["scenario"] for p in points}
    if "fanout" in scenarios:
        lines += ["### Fan-out: 1 publisher, N players", ""] + media_table(points, "fanout") + [""]
        if "fanout" in images:
            lines += [f"![fan-out CPU-s per GB]({images['fanout']})", ""]
    if "ingest" in scenarios:
        lines += ["### Ingest: 500 kb/s publishers, one RTMP player each", ""] + media_table(points, "ingest") + [""]
        if "ingest" in images:
            lines += [f"![ingest CPU-s per GB]({images['ingest']})", ""]
    if "idle" in scenarios:
        lines += ["### Idle cost: connections that completed connect and createStream", ""] + idle_table(points) + [""]
        if "idle" in images:
            lines += [f"![idle KB per connection]({images['idle']})", ""]
    if "latency" in scenarios:
        lines += ["### Latency: publisher to player, 100 RTMP players (SO_RCVLOWAT off)", ""]
        lines += latency_table(points) + [""]
        if "latency" in images:
            lines += [f"![latency]({images['latency']})", ""]
    lines += [END]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        run_dir = Path(argv[0])
    else:
        runs = sorted((BENCH / "out").glob("run-*"))
        if not runs:
            print("no run in bench/out/", file=sys.stderr)
            return 1
        run_dir = runs[-1]
    meta, points = load(run_dir)
    block = generated(meta, points, run_dir)
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    RESULTS.write_text(text)
    print(f"wrote {RESULTS} from {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
