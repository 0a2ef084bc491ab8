// Lot auctions on the pages: the list with a live countdown (from the server's `time_left_ms`, so a
// phone's wrong clock does not matter), bids and buy-now for buyers, the offer form for sellers.
import { get, post } from "../api.js";
import { price, yuan } from "../format.js";
import { t } from "../i18n.js";
import { button, form, h, table } from "../ui.js";
import { section } from "./common.js";

function countdown(leftMs) {
  const until = performance.now() + leftMs;
  const el = h("span", { class: "countdown" }, "");
  const draw = () => {
    const left = Math.max(0, until - performance.now());
    const s = Math.floor(left / 1000);
    el.textContent = `${Math.floor(s / 3600)}:${String(Math.floor(s / 60) % 60).padStart(2, "0")}:${String(s % 60).padStart(2, "0")}`;
  };
  draw();
  const timer = setInterval(() => (el.isConnected ? draw() : clearInterval(timer)), 1000);
  return el;
}

// `canBid`: a bid form (the bidder's maximum: the proxy bids for it) and buy-now on each open auction.
// `follow(feed)` keeps the section live on its page's feed (the page closes that feed when it goes):
// every message on `auctions` fetches the list again, the snapshot that follows each (re)subscription
// too, so an auction offered between the first fetch and the subscription shows as well. The section
// has no feed of its own: one that closed itself when a message found the section off the page also
// closed when the snapshot came before the page was placed (the page still loading its other
// sections), and the section then never showed a new auction without a reload.
export function auctionsSection({ canBid = false, mine = false } = {}) {
  const el = section(t("market.auctions"), async (reload) => {
    const list = await get(mine ? "/v1/auctions" : "/v1/auctions?status=open");
    const rows = mine ? list.filter((a) => a.seller_id !== undefined && a.seller_id !== null) : list;
    return h("div", {}, table([
      { label: t("common.id"), value: (a) => a.auction_id },
      { label: t("lot.heads"), value: (a) => a.heads, num: true },
      { label: t("market.price"), value: (a) => price(a.price_fen || a.start_price_fen, a.quote_unit, t), num: true },
      { label: t("auction.bids"), value: (a) => `${a.bid_count}${a.leader_paddle ? ` · #${a.leader_paddle}` : ""}` },
      { label: t("common.state"), value: (a) => h("span", { class: "badge", "data-auction-state": a.state }, a.state) },
      { label: t("auction.left"), value: (a) => (a.state === "open" ? countdown(a.time_left_ms) : "") },
      ...(mine ? [{ label: t("common.actions"), value: (a) => (a.bid_count === 0 && ["open", "scheduled"].includes(a.state)
        ? button(t("auction.withdraw"), async () => { await post(`/v1/auctions/${a.auction_id}/withdraw`); await reload(); })
        : "") }] : []),
    ], rows), canBid ? rows.filter((a) => a.state === "open").map((a) => bidBox(a, reload)) : []);
  }, mine ? "my-auctions" : "auctions");
  el.follow = (feed) => feed.subscribe("auctions", () => el.reload());
  return el;
}

function bidBox(auction, reload) {
  const box = h("div", { class: "card", "data-auction": auction.auction_id },
    h("h2", {}, `${t("auction.lot")} ${auction.auction_id}`),
    auction.your_paddle ? h("p", { class: "muted" }, `${t("auction.your_paddle")} #${auction.your_paddle} · `
      + `${t("auction.your_max")} ¥${yuan(auction.your_max_price_fen)}`) : null,
    form({
      id: `bid-auction-${auction.auction_id}`,
      fields: [{ name: "max_price", to: "max_price_fen", label: "auction.max_price", type: "yuan" }],
      submit: "auction.bid",
      action: (body) => post(`/v1/auctions/${auction.auction_id}/bids`, body),
      done: () => reload(),
    }));
  if (auction.buy_now_price_fen) {
    box.append(button(`${t("auction.buy_now")} ¥${yuan(auction.buy_now_price_fen)}`, async () => {
      await post(`/v1/auctions/${auction.auction_id}/buy-now`);
      await reload();
    }, ""));
  }
  return box;
}

// A seller offers one of its lots by auction; `lots` is a <select> of its lots with free heads.
export function offerForm(lots, done) {
  const el = form({
    id: "auction-form",
    fields: [
      { name: "start", to: "start_price_fen", label: "auction.start", type: "yuan" },
      { name: "reserve", to: "reserve_price_fen", label: "auction.reserve", type: "yuan" },
      { name: "increment", label: "auction.increment", type: "yuan", value: "0.10" },
      { name: "buy_now", to: "buy_now_price_fen", label: "auction.buy_now", type: "yuan", optional: true },
      { name: "minutes", label: "auction.minutes", type: "int", value: 60 },
      { name: "extension_s", label: "auction.extension", type: "int", value: 60 },
    ],
    fixed: () => ({ lot_id: Number(lots.value) }),
    submit: "auction.offer",
    action: ({ increment, minutes, ...body }) => post("/v1/auctions", {
      ...body, increments: [{ from_price_fen: 0, increment_fen: increment }],
      closes_at_ms: Date.now() + minutes * 60_000,
    }),
    done,
  });
  el.prepend(h("div", { class: "field" }, h("label", { for: lots.id }, t("sell.lot")), lots));
  return el;
}
