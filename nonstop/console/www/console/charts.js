// Small live charts: a ring of samples per series (the last few minutes of polls) drawn as an SVG line.

const NS = "http://www.w3.org/2000/svg";
export const KEEP = 150;                 // samples: 5 minutes at one poll every 2 s

export class Series {
  constructor(label, format) { this.label = label; this.format = format; this.points = []; }
  push(value) { this.points.push(value); if (this.points.length > KEEP) this.points.shift(); }
  get last() { return this.points.length ? this.points[this.points.length - 1] : 0; }
}

export function chart(series) {
  const w = 300, hgt = 60;
  const max = Math.max(1e-9, ...series.points);
  const step = w / (KEEP - 1);
  const offset = (KEEP - series.points.length) * step;
  const coords = series.points.map((v, i) => `${(offset + i * step).toFixed(1)},${(hgt - 2 - (v / max) * (hgt - 4)).toFixed(1)}`);
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${hgt}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const line = document.createElementNS(NS, "polyline");
  line.setAttribute("points", coords.join(" "));
  svg.append(line);
  const box = document.createElement("div");
  box.className = "card chart";
  const title = document.createElement("div");
  title.className = "label";
  title.textContent = `${series.label}: ${series.format(series.last)} (max ${series.format(max === 1e-9 ? 0 : max)})`;
  box.append(title, svg);
  return box;
}
