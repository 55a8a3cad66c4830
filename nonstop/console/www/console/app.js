// The console: one poll of /api/v1/nonstop/summary every POLL_MS drives every view and the charts.

import * as api from "./api.js";
import * as views from "./views.js";
import { Series } from "./charts.js";
import { kbps, percent, bytes } from "./dom.js";

const POLL_MS = 2000;
const $ = (id) => document.getElementById(id);
const VIEWS = ["overview", "streams", "clients", "upgrades", "cluster"];

const series = [
  new Series("in", kbps), new Series("out", kbps), new Series("connections", (v) => String(v)),
  new Series("CPU, all processes", percent), new Series("memory, all processes", (v) => bytes(v * 1024)),
];
const state = { data: null, polls: 0, errors: 0, lastError: "" };
window.nonstopConsole = state;      // for the browser tests and curious operators

function current() {
  const name = location.hash.slice(1);
  return VIEWS.includes(name) ? name : "overview";
}

function banner(text, error = false) {
  const el = $("banner");
  el.textContent = text || "";
  el.classList.toggle("hidden", !text);
  el.classList.toggle("error", error);
}

const ctx = {
  series,
  async kick(id, what) {
    try {
      await api.del(`/api/v1/clients/${encodeURIComponent(id)}`);
      banner(`Kicked ${what}.`);
      poll();
    } catch (e) { failed(e); }
  },
  async signal(what) {
    try {
      await api.post(`/api/v1/nonstop/${what}`);
      banner(`Asked the master for a${what === "upgrade" ? "n" : ""} ${what}; the history below shows its outcome.`);
    } catch (e) { failed(e); }
  },
};

function render() {
  for (const a of document.querySelectorAll("#nav a[data-view]")) a.classList.toggle("active", a.dataset.view === current());
  const view = $("view");
  if (!state.data) return;
  view.replaceChildren(...[views[current()](state.data, ctx)].flat());
}

function failed(e) {
  state.errors++;
  state.lastError = String(e.message || e);
  if (e instanceof api.AuthNeeded) {
    $("login").classList.remove("hidden");
    banner("");
  } else {
    banner(`The API did not answer: ${state.lastError}. Retrying.`, true);
  }
  $("status").textContent = "disconnected";
}

async function poll() {
  try {
    const body = await api.get("/api/v1/nonstop/summary");
    const d = body.data;
    // In and out from the service's byte totals between two polls: they run on across an upgrade (the new
    // worker carries the old one's totals), where a worker's own 30 s rates start again from zero.
    const prev = state.data;
    const span = prev ? (d.now_ms - prev.now_ms) / 1000 : 0;
    if (span > 0.5 && d.totals.recv_bytes >= prev.totals.recv_bytes && d.totals.send_bytes >= prev.totals.send_bytes) {
      d.totals.kbps = {
        recv_30s: Math.round((d.totals.recv_bytes - prev.totals.recv_bytes) * 8 / 1000 / span),
        send_30s: Math.round((d.totals.send_bytes - prev.totals.send_bytes) * 8 / 1000 / span),
      };
    }
    state.data = d;
    state.polls++;
    series[0].push(d.totals.kbps.recv_30s);
    series[1].push(d.totals.kbps.send_30s);
    series[2].push(d.totals.connections);
    series[3].push(d.processes.reduce((sum, p) => sum + p.cpu, 0));
    series[4].push(d.processes.reduce((sum, p) => sum + p.rss_kbyte, 0));
    $("login").classList.add("hidden");
    if ($("banner").classList.contains("error")) banner("");
    $("status").textContent = `generation ${d.generation} · updated ${new Date(d.now_ms).toLocaleTimeString()}`;
    render();
  } catch (e) { failed(e); }
}

$("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  api.setCredentials($("login-user").value, $("login-pass").value);
  poll();
});
window.addEventListener("hashchange", render);

let timer = null;
function schedule() {
  clearTimeout(timer);
  timer = setTimeout(async () => { await poll(); schedule(); }, POLL_MS);
}
poll().then(schedule);
