// Our own small SVG charts: candles, book depth and a price line. Prices arrive as integer fen and
// are only scaled to pixels here; labels go through format.yuan.
import { yuan } from "./format.js";

const NS = "http://www.w3.org/2000/svg";
const W = 360, H = 180, PAD = 34;

function svg(label) {
  const el = document.createElementNS(NS, "svg");
  el.setAttribute("viewBox", `0 0 ${W} ${H}`);
  el.setAttribute("class", "chart");
  el.setAttribute("role", "img");
  el.setAttribute("aria-label", label);
  return el;
}

function add(parent, tag, attrs, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  parent.append(el);
  return el;
}

function scale(lo, hi, outLo, outHi) {
  const span = hi - lo || 1;
  return (v) => outLo + ((v - lo) / span) * (outHi - outLo);
}

function axis(el, lo, hi) {
  add(el, "line", { x1: PAD, y1: 4, x2: PAD, y2: H - 14, class: "axis" });
  add(el, "text", { x: 2, y: 12 }, yuan(hi));
  add(el, "text", { x: 2, y: H - 16 }, yuan(lo));
}

export function candles(list, label) {
  const el = svg(label);
  if (!list.length) return el;
  const lo = Math.min(...list.map((c) => c.low_fen)), hi = Math.max(...list.map((c) => c.high_fen));
  const y = scale(lo, hi, H - 16, 6);
  const step = (W - PAD - 4) / Math.max(list.length, 20);
  axis(el, lo, hi);
  list.forEach((c, i) => {
    const x = PAD + 2 + i * step + step / 2;
    const cls = c.close_fen >= c.open_fen ? "up" : "down";
    add(el, "line", { x1: x, x2: x, y1: y(c.high_fen), y2: y(c.low_fen), class: cls });
    const top = y(Math.max(c.open_fen, c.close_fen)), bottom = y(Math.min(c.open_fen, c.close_fen));
    add(el, "rect", { x: x - step * 0.35, y: top, width: step * 0.7, height: Math.max(1, bottom - top), class: cls });
  });
  return el;
}

// bids and asks: [[price_fen, heads], ...] best first; cumulative heads drawn outward from the mid
export function depth(bids, asks, label) {
  const el = svg(label);
  const cumulative = (levels) => { let sum = 0; return levels.map(([p, q]) => [p, (sum += q)]); };
  const b = cumulative(bids), a = cumulative(asks);
  const all = [...b, ...a];
  if (!all.length) return el;
  const lo = Math.min(...all.map((l) => l[0])), hi = Math.max(...all.map((l) => l[0]));
  const top = Math.max(...all.map((l) => l[1]));
  const x = scale(lo, hi, PAD + 2, W - 4), y = scale(0, top, H - 14, 6);
  add(el, "text", { x: PAD + 2, y: H - 2 }, yuan(lo));
  add(el, "text", { x: W - 60, y: H - 2 }, yuan(hi));
  for (const [levels, cls] of [[b, "bid"], [a, "ask"]]) {
    levels.forEach(([p, q]) => add(el, "rect", { x: x(p) - 3, y: y(q), width: 6, height: H - 14 - y(q), class: cls }));
  }
  return el;
}

// points: [[time_ms, price_fen], ...] oldest first
export function line(points, label) {
  const el = svg(label);
  if (!points.length) return el;
  const prices = points.map((p) => p[1]);
  const lo = Math.min(...prices), hi = Math.max(...prices);
  const x = scale(0, Math.max(points.length - 1, 1), PAD + 4, W - 6), y = scale(lo, hi, H - 16, 6);
  axis(el, lo, hi);
  add(el, "polyline", { points: points.map((p, i) => `${x(i)},${y(p[1])}`).join(" "), class: "line" });
  return el;
}
