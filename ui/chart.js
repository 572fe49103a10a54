// A stacked bar chart of spend per day, drawn as SVG with DOM calls (text is set with
// textContent, colours with presentation attributes: nothing the CSP has to allow).

const SVG = "http://www.w3.org/2000/svg";
const PALETTE = ["#2f5bd3", "#e07b39", "#3a9e6f", "#b54aa5", "#c9a227", "#4fa3c7", "#8a5a44", "#6b7280"];
const WIDTH = 900;
const HEIGHT = 260;
const PAD = { left: 64, right: 12, top: 12, bottom: 40 };

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

export function colour(i) {
  return PALETTE[i % PALETTE.length];
}

/// A small coloured square for a legend entry.
export function swatch(i) {
  const s = svg("svg", { width: 12, height: 12, viewBox: "0 0 12 12", "aria-hidden": "true" });
  s.append(svg("rect", { width: 12, height: 12, fill: colour(i) }));
  return s;
}

function money(v) {
  if (v === 0) return "$0";
  return "$" + (v >= 1 ? v.toFixed(2) : String(Number(v.toPrecision(2))));
}

/// days: ["YYYY-MM-DD", ...]; series: [{name, values: [number per day]}].
export function stackedBars(days, series, format = money) {
  const totals = days.map((_, d) => series.reduce((sum, s) => sum + (s.values[d] || 0), 0));
  const max = Math.max(...totals, 0);
  const root = svg("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", id: "spend-chart" });
  root.dataset.total = String(totals.reduce((a, b) => a + b, 0));
  root.dataset.days = String(days.length);
  const title = svg("title");
  title.textContent = "Spend per day";
  root.append(title);
  const plotW = WIDTH - PAD.left - PAD.right;
  const plotH = HEIGHT - PAD.top - PAD.bottom;
  const y = (v) => PAD.top + plotH - (max > 0 ? (v / max) * plotH : 0);
  // Axis with three gridlines.
  for (const f of [0, 0.5, 1]) {
    const v = max * f;
    root.append(svg("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: y(v), y2: y(v), stroke: "#e4e7ec" }));
    const label = svg("text", { x: PAD.left - 6, y: y(v) + 4, "text-anchor": "end", "font-size": 11, fill: "#667085" });
    label.textContent = format(v);
    root.append(label);
  }
  const slot = days.length > 0 ? plotW / days.length : plotW;
  const barW = Math.max(2, Math.min(48, slot * 0.7));
  days.forEach((day, d) => {
    const x = PAD.left + d * slot + (slot - barW) / 2;
    let base = 0;
    series.forEach((s, i) => {
      const v = s.values[d] || 0;
      if (v <= 0) return;
      const rect = svg("rect", { x, width: barW, y: y(base + v), height: Math.max(1, y(base) - y(base + v)), fill: colour(i), class: "bar" });
      const tip = svg("title");
      tip.textContent = `${day} · ${s.name}: ${format(v)}`;
      rect.append(tip);
      root.append(rect);
      base += v;
    });
    // Label every day when few, else about eight of them.
    if (days.length <= 10 || d % Math.ceil(days.length / 8) === 0) {
      const label = svg("text", { x: x + barW / 2, y: HEIGHT - PAD.bottom + 16, "text-anchor": "middle", "font-size": 11, fill: "#667085" });
      label.textContent = day.slice(5);
      root.append(label);
    }
  });
  return root;
}
