// A small SVG line chart: lineChart({title, yLabel, series: [{name, color, points: [[x, y], ...], dots}]}).
const SVG = "http://www.w3.org/2000/svg";
const W = 560, H = 260, PAD = { left: 58, right: 14, top: 26, bottom: 34 };
const MAX_POINTS = 1500; // more points than pixels only slows the page

function node(tag, attrs = {}, text) {
  const n = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
  if (text !== undefined) n.textContent = text;
  return n;
}

function ticks(lo, hi, count = 5) {
  const span = hi - lo || Math.abs(hi) || 1;
  const step0 = span / count, mag = 10 ** Math.floor(Math.log10(step0));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= step0);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

function label(v) {
  const a = Math.abs(v);
  if (a >= 1e6) return `${+(v / 1e6).toPrecision(3)}M`;
  if (a >= 1e4) return `${+(v / 1e3).toPrecision(3)}k`;
  return `${+v.toPrecision(4)}`;
}

function thin(points) {
  if (points.length <= MAX_POINTS) return points;
  const every = Math.ceil(points.length / MAX_POINTS);
  return points.filter((_, i) => i % every === 0 || i === points.length - 1);
}

export function lineChart({ title, yLabel = "", xLabel = "step", series }) {
  const svg = node("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": title });
  svg.append(node("text", { x: PAD.left, y: 16, "font-weight": 600 }, title));
  const all = series.flatMap((s) => s.points).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
  if (!all.length) {
    svg.append(node("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no data yet"));
    return svg;
  }
  let [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  if (x0 === x1) x1 = x0 + 1;
  if (y0 === y1) { y0 -= Math.abs(y0) * 0.1 || 1; y1 += Math.abs(y1) * 0.1 || 1; }
  const pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad;
  const sx = (x) => PAD.left + ((x - x0) / (x1 - x0)) * (W - PAD.left - PAD.right);
  const sy = (y) => H - PAD.bottom - ((y - y0) / (y1 - y0)) * (H - PAD.top - PAD.bottom);
  for (const t of ticks(y0, y1)) {
    svg.append(node("line", { x1: PAD.left, x2: W - PAD.right, y1: sy(t), y2: sy(t), stroke: "#eceef1" }));
    svg.append(node("text", { x: PAD.left - 6, y: sy(t) + 4, "text-anchor": "end" }, label(t)));
  }
  for (const t of ticks(x0, x1, 6)) {
    svg.append(node("text", { x: sx(t), y: H - PAD.bottom + 16, "text-anchor": "middle" }, label(t)));
  }
  svg.append(node("text", { x: W - PAD.right, y: H - 4, "text-anchor": "end" }, xLabel));
  if (yLabel) svg.append(node("text", { x: 12, y: PAD.top + (H - PAD.top - PAD.bottom) / 2, "text-anchor": "middle",
    transform: `rotate(-90 12 ${PAD.top + (H - PAD.top - PAD.bottom) / 2})` }, yLabel));
  svg.append(node("rect", { x: PAD.left, y: PAD.top, width: W - PAD.left - PAD.right, height: H - PAD.top - PAD.bottom,
    fill: "none", stroke: "#d5d9e0" }));
  let legendX = W - PAD.right;
  for (const s of [...series].reverse()) {
    const points = thin(s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y)));
    if (!points.length) continue;
    const path = points.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" ");
    svg.append(node("polyline", { points: path, fill: "none", stroke: s.color, "stroke-width": s.width || 1.6,
      "stroke-opacity": s.opacity || 1, class: `series series-${s.name.replace(/\W+/g, "-")}`, "data-points": points.length }));
    if (s.dots) for (const [x, y] of points) svg.append(node("circle", { cx: sx(x), cy: sy(y), r: 3, fill: s.color }));
    const text = node("text", { x: legendX, y: 16, "text-anchor": "end", fill: s.color }, s.name);
    svg.append(text);
    legendX -= s.name.length * 6.5 + 16;
  }
  return svg;
}

// Exponential moving average, bias-corrected (the same smoothing as the trainer's loss.png).
export function smooth(values, weight = 0.9) {
  let average = 0;
  return values.map((v, i) => { average = weight * average + (1 - weight) * v; return average / (1 - weight ** (i + 1)); });
}
