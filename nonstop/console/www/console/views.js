// The console's five views, each a function of the last summary (/api/v1/nonstop/summary) to DOM nodes.

import { h, table, bytes, duration, kbps, percent, time, state } from "./dom.js";
import { chart } from "./charts.js";

function card(label, value, id) {
  return h("div", { class: "card" }, h("div", { class: "label" }, label), h("div", { class: "value", id }, value));
}

function flvPath(stream) {
  return `${stream.url}.flv`;
}

export function overview(d, ctx) {
  const t = d.totals, last = d.upgrades.last;
  const draining = d.workers.filter((w) => w.state !== "serving" && w.state !== "starting").length;
  return [
    h("div", { class: "cards" },
      card("version", d.version, "ov-version"),
      card("uptime (since the master started)", duration(d.master.uptime_s), "ov-uptime"),
      card("worker generation", d.generation, "ov-generation"),
      card("connections", t.connections, "ov-connections"),
      card("streams", t.streams, "ov-streams"),
      card("clients", `${t.clients} (${t.publishers} publishing)`, "ov-clients"),
      card("in", kbps(t.kbps.recv_30s), "ov-in"),
      card("out", kbps(t.kbps.send_30s), "ov-out"),
      card("last upgrade", last.state === "idle" ? "none yet" : state(last.state), "ov-upgrade"),
      card("workers", `${d.workers.length}${draining ? ` (${draining} draining)` : ""}`, "ov-workers")),
    h("div", { class: "charts" }, ctx.series.map(chart)),
    h("h2", {}, "Processes"),
    table(["role", "pid", "generation", "state", "CPU", "memory"], d.processes.map((p) =>
      h("tr", {}, h("td", {}, p.role), h("td", { class: "num" }, p.pid), h("td", { class: "num" }, p.generation ?? "-"),
        h("td", {}, p.role === "master" ? "-" : state(p.state || "serving")), h("td", { class: "num" }, percent(p.cpu)),
        h("td", { class: "num" }, bytes(p.rss_kbyte * 1024)))), "no process figures"),
  ];
}

export function streams(d, ctx) {
  return [
    h("h2", {}, `Streams (${d.totals.streams})`),
    table(["stream", "video", "audio", "in", "out", "players", "age", "source", ""], d.streams.map((s) =>
      h("tr", { "data-stream": s.url },
        h("td", {}, s.url),
        h("td", {}, s.video ? `${s.video.codec} ${s.video.width}x${s.video.height}` : "-"),
        h("td", {}, s.audio ? `${s.audio.codec} ${s.audio.sample_rate} Hz` : "-"),
        h("td", { class: "num" }, kbps(s.kbps.recv_30s)),
        h("td", { class: "num" }, kbps(s.kbps.send_30s)),
        h("td", { class: "num players" }, s.players),
        h("td", { class: "num" }, duration(s.age_s)),
        h("td", {}, s.origin === "edge" ? "edge pull" : s.origin === "publisher" ? `publisher ${s.publisher_ip}` : "waiting"),
        h("td", {},
          h("a", { href: `/players/?url=${encodeURIComponent(flvPath(s))}`, target: "_blank", class: "preview" }, "Preview"),
          " ",
          s.publisher ? h("button", { class: "danger kick-publisher", "data-id": s.publisher,
            onclick: () => ctx.kick(s.publisher, `the publisher of ${s.url}`) }, "Kick publisher") : null))),
    "No stream is published. Publish one with: ffmpeg -re -i FILE -c copy -f flv rtmp://HOST/live/livestream"),
  ];
}

export function clients(d, ctx) {
  return [
    h("h2", {}, `Clients (${d.totals.clients})`),
    table(["id", "type", "ip", "stream", "age", "sent", "received", "rate", ""], d.clients.map((c) =>
      h("tr", { "data-client": c.id },
        h("td", {}, c.id), h("td", {}, c.type), h("td", {}, c.ip), h("td", {}, c.stream),
        h("td", { class: "num" }, duration(c.age_s)), h("td", { class: "num" }, bytes(c.send_bytes)),
        h("td", { class: "num" }, bytes(c.recv_bytes)),
        h("td", { class: "num" }, kbps(Math.max(c.kbps.send_30s, c.kbps.recv_30s))),
        h("td", {}, h("button", { class: "danger kick", "data-id": c.id, onclick: () => ctx.kick(c.id, `client ${c.id}`) },
          "Kick")))),
    "No client."),
  ];
}

export function upgrades(d, ctx) {
  const last = d.upgrades.last;
  const history = [...d.upgrades.history].reverse();
  return [
    h("div", { class: "cards" },
      card("generation", d.generation, "up-generation"),
      card("last upgrade", last.state === "idle" ? "none yet" : state(last.state), "up-state"),
      card("moved (handed over)", last.handed_over, "up-moved"),
      card("drained", last.drained, "up-drained"),
      card("slowest connection handover (ms)", last.worst_ms, "up-worst")),
    d.writable ? h("p", { id: "actions" },
      h("button", { class: "primary", id: "do-reload", onclick: () => ctx.signal("reload") }, "Reload config"), " ",
      h("button", { class: "primary", id: "do-upgrade", onclick: () => ctx.signal("upgrade") }, "Upgrade"))
      : h("p", { class: "muted" }, "Reload and upgrade buttons appear when the API takes writes (http_api.auth on)."),
    h("h2", {}, "Workers"),
    table(["pid", "generation", "state", "started"], d.workers.map((w) =>
      h("tr", { "data-worker": w.pid }, h("td", { class: "num" }, w.pid), h("td", { class: "num" }, w.generation),
        h("td", {}, state(w.state === "retiring" ? "retiring" : w.state)), h("td", {}, time(w.started_ms)))),
    "No worker."),
    h("h2", {}, "History (newest first)"),
    table(["what", "outcome", "started", "took", "handed over", "failed", "drained", "handover (ms)", "slowest connection (ms)",
      "why"], history.map((e) =>
      h("tr", { class: "history", "data-kind": e.kind, "data-state": e.state },
        h("td", {}, e.kind), h("td", {}, state(e.state)), h("td", {}, time(e.started_ms)),
        h("td", { class: "num" }, e.finished_ms ? `${((e.finished_ms - e.started_ms) / 1000).toFixed(1)} s` : "-"),
        h("td", { class: "num" }, e.kind === "upgrade" ? e.handed_over : "-"),
        h("td", { class: "num" }, e.kind === "upgrade" ? e.failed : "-"),
        h("td", { class: "num" }, e.kind === "upgrade" ? e.drained : "-"),
        h("td", { class: "num" }, e.kind === "upgrade" ? e.total_ms : "-"),
        h("td", { class: "num" }, e.kind === "upgrade" ? e.worst_ms : "-"),
        h("td", {}, e.reason || ""))),
    "No upgrade or reload since the master started (send SIGUSR2 or SIGHUP, or `nonstop -s upgrade`)."),
  ];
}

export function cluster(d) {
  if (!d.cluster.length) {
    return [h("p", { class: "muted" }, "This server is a lone origin: no vhost has a cluster section.")];
  }
  return d.cluster.map((c) => h("div", {},
    h("h2", {}, `vhost ${c.vhost}: ${c.mode}`),
    c.mode === "edge"
      ? table(["origin", "health", "failures", "last error", "retry in"], c.origins.map((o) =>
        h("tr", {}, h("td", {}, o.address), h("td", { class: `health-${o.health}` }, o.health),
          h("td", { class: "num" }, o.failures), h("td", {}, o.last_error || ""),
          h("td", { class: "num" }, o.retry_in_s ? `${o.retry_in_s} s` : "-"))), "No origin.")
      : h("p", {}, `origin cluster: ${c.origin_cluster ? "on" : "off"}`),
    c.coworkers.length ? h("div", {}, h("h2", {}, "Coworkers"),
      table(["coworker (HTTP API)"], c.coworkers.map((w) => h("tr", {}, h("td", {}, w))), "")) : null));
}
