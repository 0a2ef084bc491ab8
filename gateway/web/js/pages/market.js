// The public market: each instrument's book, last trades, candles and daily price, live over the
// WebSocket (`book.{symbol}` snapshot + deltas, `trades.{symbol}`); open lot auctions when the
// exchange runs them.
import { Feed, get } from "../api.js";
import { candles, depth, line } from "../charts.js";
import { cst, price, yuan } from "../format.js";
import { t } from "../i18n.js";
import { card, h, table } from "../ui.js";
import { auctionsSection } from "./auctions.js";

let feed = null;
let selected = null;

export function stop() {
  if (feed) feed.close();
  feed = null;
}

export async function render() {
  stop();
  const instruments = await get("/v1/instruments");
  if (!instruments.length) return h("div", {}, h("h1", {}, t("market.title")), h("p", { class: "muted" }, t("market.no_instruments")));
  if (!selected || !instruments.some((i) => i.symbol === selected)) selected = instruments[0].symbol;
  const root = h("div", {});
  const tabs = h("div", { class: "tabs", role: "group", "aria-label": t("market.title") });
  const body = h("div", {});
  for (const i of instruments) {
    const tab = h("button", { type: "button", "aria-pressed": i.symbol === selected ? "true" : "false" }, i.symbol);
    tab.addEventListener("click", async () => {
      selected = i.symbol;
      for (const b of tabs.children) b.setAttribute("aria-pressed", b === tab ? "true" : "false");
      await show(body, i);
    });
    tabs.append(tab);
  }
  root.append(h("h1", {}, t("market.title")), tabs, body);
  await show(body, instruments.find((i) => i.symbol === selected));
  return root;
}

async function show(body, instrument) {
  stop();
  feed = new Feed();
  const symbol = instrument.symbol;
  const unit = instrument.quote_unit;
  const [book, trades, minute, daily] = await Promise.all([
    get(`/v1/markets/${symbol}/book?depth=10`), get(`/v1/markets/${symbol}/trades?limit=20`),
    get(`/v1/markets/${symbol}/candles?interval=1m&limit=60`), get(`/v1/markets/${symbol}/candles?interval=1d&limit=60`),
  ]);
  const levels = { bids: new Map(book.bids), asks: new Map(book.asks), seq: book.seq };
  let recent = trades.trades;
  const last = h("span", { class: "price", id: "last-price" }, recent.length ? price(recent[0].price_fen, unit, t) : "—");
  const summary = card(symbol,
    h("p", {}, `${t("market.last")}: `, last),
    h("p", { class: "muted" }, `${t("market.reference")} ${price(instrument.reference_price_fen, unit, t)} · `,
      `${t("market.band")} ${yuan(instrument.band_low_fen)}–${yuan(instrument.band_high_fen)} · `,
      `${t("market.state")} ${instrument.state}`));
  const bookBox = h("div", { id: "book" });
  const tradesBox = h("div", { id: "trades" });
  const candleBox = h("div", {}, candles(minute.candles, t("market.candles")));
  const dailyBox = h("div", {}, await indexChart(instrument, daily));
  const drawBook = () => {
    const sorted = (m, desc) => [...m.entries()].sort((a, b) => (desc ? b[0] - a[0] : a[0] - b[0]));
    const bids = sorted(levels.bids, true), asks = sorted(levels.asks, false);
    const rows = [];
    for (let i = 0; i < Math.max(bids.length, asks.length); i++) rows.push([bids[i], asks[i]]);
    bookBox.replaceChildren(bids.length || asks.length ? depth(bids, asks, t("market.book")) : "", table([
      { label: t("market.bids"), value: (r) => (r[0] ? `${yuan(r[0][0])} × ${r[0][1]}` : ""), num: true },
      { label: t("market.asks"), value: (r) => (r[1] ? `${yuan(r[1][0])} × ${r[1][1]}` : ""), num: true },
    ], rows));
  };
  const drawTrades = () => {
    tradesBox.replaceChildren(table([
      { label: t("common.time"), value: (r) => cst(r.time_ms) },
      { label: t("market.price"), value: (r) => yuan(r.price_fen), num: true },
      { label: t("market.heads"), value: (r) => r.quantity_heads, num: true },
    ], recent.slice(0, 20)));
    if (recent.length) last.textContent = price(recent[0].price_fen, unit, t);
  };
  drawBook();
  drawTrades();
  const auctions = await auctionCard();
  body.replaceChildren(h("div", { class: "grid" }, summary, card(t("market.book"), bookBox),
    card(t("market.trades"), tradesBox), card(t("market.candles"), candleBox), card(t("market.index"), dailyBox),
    auctions));
  if (auctions) auctions.follow(feed);
  feed.subscribe(`book.${symbol}`, (m) => {
    if (m.type === "book_snapshot") {
      levels.bids = new Map(m.bids); levels.asks = new Map(m.asks); levels.seq = m.seq;
    } else if (m.type === "book_delta") {
      for (const [side, changes] of [[levels.bids, m.bids], [levels.asks, m.asks]]) {
        for (const [p, q] of changes) if (q === 0) side.delete(p); else side.set(p, q);
      }
      levels.seq = m.last_seq;
    }
    drawBook();
  });
  feed.subscribe("index", async () => dailyBox.replaceChildren(await indexChart(instrument, daily)));
  feed.subscribe(`trades.${symbol}`, async (m) => {
    if (m.type !== "trades") return;
    recent = [...m.trades.slice().reverse(), ...recent].slice(0, 50);
    drawTrades();
    const fresh = await get(`/v1/markets/${symbol}/candles?interval=1m&limit=60`);
    candleBox.replaceChildren(candles(fresh.candles, t("market.candles")));
  });
}

// The live-hog price index of the instrument's series (product class, breed, delivery region), base
// 1000, with the head-weighted average price of the latest day; the daily close where there is none.
async function indexChart(instrument, daily) {
  const query = new URLSearchParams({ product_class: instrument.product_class, breed_class: instrument.breed_class,
    region: instrument.delivery_point });
  let rows = [];
  try { rows = await get(`/v1/index/history?${query}`); } catch { rows = []; }
  if (!rows.length) return line(daily.candles.map((c) => [c.start_ms, c.close_fen]), t("market.daily"));
  const last = rows[rows.length - 1];
  // the index is null before the series' base day (named at listing): such days have an average only
  return h("div", { id: "index" },
    h("p", {}, `${t("market.index")} ${last.index ?? "—"}`, last.provisional ? ` (${t("market.provisional")})` : "",
      ` · ${t("market.avg")} ${price(last.avg_price_fen, last.quote_unit, t)} · ${last.heads}${t("unit.heads")}`),
    line(rows.filter((r) => r.index_x100 !== null).map((r) => [r.date, r.index_x100]), t("market.index")));
}

// Open lot auctions, for a signed-in person (the auction routes need one); a visitor sees none.
async function auctionCard() {
  const box = auctionsSection();
  try {
    await box.reload();
    return box.querySelector(".error") ? null : box;
  } catch {
    return null;
  }
}
