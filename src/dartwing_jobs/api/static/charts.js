// Inline SVG charts drawn by hand: horizontal bar charts, optionally grouped.
// Labels are SVG text nodes (textContent), never markup.

import { h, s } from "./dom.js";

const ROW = 26;
const GROUP_GAP = 10;

/** Drawing sizes: on a phone the viewBox is about as wide as the screen, so text
 * is drawn near its nominal size instead of being scaled down. */
function sizes() {
  return window.matchMedia("(max-width: 600px)").matches
    ? { WIDTH: 340, LABEL_W: 98, VALUE_W: 96 }
    : { WIDTH: 520, LABEL_W: 124, VALUE_W: 118 };
}

function truncate(text, max = 18) {
  const str = String(text);
  return str.length > max ? `${str.slice(0, max - 1)}…` : str;
}

/**
 * rows: [{label, values: [{value, text, cls}]}]; each row is one group of bars.
 * legend: [{label, cls}] (optional). title: accessible name.
 */
export function barChart({ title, rows, legend, max, emptyText }) {
  if (!rows.length) {
    return h("p", { class: "empty-chart" }, emptyText || "No data in this window.");
  }
  const { WIDTH, LABEL_W, VALUE_W } = sizes();
  const perGroup = Math.max(...rows.map((r) => r.values.length));
  const barH = perGroup > 1 ? 14 : 18;
  const groupH = perGroup > 1 ? perGroup * (barH + 3) + GROUP_GAP : ROW;
  const top = 6;
  const height = top + rows.length * groupH + 4;
  const top_value = max ?? Math.max(1e-9, ...rows.flatMap((r) => r.values.map((v) => v.value || 0)));
  const plotW = WIDTH - LABEL_W - VALUE_W;
  const summary = rows
    .map((r) => `${r.label}: ${r.values.map((v) => v.text).join(", ")}`)
    .join("; ");
  const svg = s("svg", {
    viewBox: `0 0 ${WIDTH} ${height}`, class: "chart", role: "img",
    "aria-label": `${title}. ${summary}`, preserveAspectRatio: "xMinYMin meet",
  }, s("title", {}, title));
  rows.forEach((row, i) => {
    const y0 = top + i * groupH;
    const g = s("g", { class: "chart-row" });
    g.append(s("text", {
      x: LABEL_W - 8, y: y0 + (perGroup > 1 ? (perGroup * (barH + 3)) / 2 : barH / 2) + 4,
      "text-anchor": "end", class: "chart-label",
    }, s("title", {}, row.label), truncate(row.label)));
    row.values.forEach((v, j) => {
      const y = y0 + j * (barH + 3);
      const w = Math.max(v.value > 0 ? 2 : 0, (plotW * (v.value || 0)) / top_value);
      g.append(s("rect", { x: LABEL_W, y, width: plotW, height: barH, class: "chart-track", rx: 3 }));
      g.append(s("rect", {
        x: LABEL_W, y, width: Math.min(plotW, w), height: barH, rx: 3,
        class: `chart-bar ${v.cls || ""}`,
      }, s("title", {}, `${row.label}: ${v.text}`)));
      g.append(s("text", { x: LABEL_W + plotW + 6, y: y + barH / 2 + 4, class: "chart-value" }, v.text));
    });
    svg.append(g);
  });
  const figure = h("figure", { class: "chart-figure" }, svg);
  if (legend && legend.length) {
    figure.append(h("figcaption", { class: "legend" },
      legend.map((l) => h("span", { class: "legend-item" },
        h("span", { class: `swatch ${l.cls}`, "aria-hidden": "true" }), l.label))));
  }
  return figure;
}
