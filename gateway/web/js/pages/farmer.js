// A farmer's or cooperative's page: register lots, sell them, weigh in deliveries, follow the money.
import { Feed, get, post } from "../api.js";
import { heads, kg } from "../format.js";
import { t } from "../i18n.js";
import { form, h, table } from "../ui.js";
import { auctionsSection, offerForm } from "./auctions.js";
import { balancesSection, card, loansSection, ordersSection, payoutsSection, section, tradeForm, tradesSection } from "./common.js";

export async function render(ctx) {
  const instruments = await get("/v1/instruments");
  const options = instruments.map((i) => [i.symbol, `${i.symbol} · ${i.delivery_point}`]);
  const orders = ordersSection();
  const lots = section(t("farmer.lots"), async () => {
    const list = await get("/v1/lots");
    for (const select of [sellLots, auctionLots]) {
      select.replaceChildren(...list.filter((l) => l.available_heads > 0).map((l) =>
        h("option", { value: String(l.lot_id), "data-instrument": l.instrument },
          `${l.lot_id} · ${l.instrument} · ${heads(l.available_heads, t)}`)));
    }
    return table([
      { label: t("lot.id"), value: (l) => l.lot_id },
      { label: t("lot.instrument"), value: (l) => l.instrument },
      { label: t("lot.heads"), value: (l) => heads(l.heads, t), num: true },
      { label: t("lot.avg_weight"), value: (l) => kg(l.avg_weight_g), num: true },
      { label: t("lot.available"), value: (l) => heads(l.available_heads, t), num: true },
    ], list);
  }, "lots");
  const lotForm = form({
    id: "lot-form",
    fields: [
      { name: "instrument", label: "lot.instrument", type: "select", options },
      { name: "heads", label: "lot.heads", type: "int" },
      { name: "avg_weight", to: "avg_weight_g", label: "lot.avg_weight", type: "kg" },
      { name: "origin", label: "lot.origin", type: "text" },
      { name: "quarantine_cert", label: "lot.cert", type: "text" },
      { name: "ear_tags", label: "lot.ear_tags", type: "text", optional: true },
    ],
    ref: { name: "client_lot_ref", prefix: "lot" },
    submit: "lot.submit",
    action: (body) => post("/v1/lots", body),
    done: () => lots.reload(),
  });
  const sellLots = h("select", { id: "sell-lot", name: "lot_id" });
  const auctionLots = h("select", { id: "auction-lot", name: "lot_id" });
  const myAuctions = auctionsSection({ mine: true });
  const offer = offerForm(auctionLots, async () => { await lots.reload(); await myAuctions.reload(); });
  const sellForm = form({
    id: "sell-form",
    fields: [
      { name: "quantity_heads", label: "sell.heads", type: "int" },
      { name: "price", to: "price_fen", label: "sell.price", type: "yuan" },
    ],
    fixed: () => {
      const option = sellLots.selectedOptions[0];
      return option ? { lot_id: Number(option.value), instrument: option.dataset.instrument, side: "sell" } : { side: "sell" };
    },
    ref: { name: "client_order_id", prefix: "sell" },
    submit: "sell.submit",
    action: (body) => post("/v1/orders", body),
    done: async () => { await orders.reload(); await lots.reload(); },
  });
  sellForm.prepend(h("div", { class: "field" }, h("label", { for: "sell-lot" }, t("sell.lot")), sellLots));
  const trades = tradesSection(t("deliveries.title"), (trade, reload) => (trade.state === "DELIVERED" ? tradeForm(trade, {
    // A seller who believes the scale under-read disputes within the window (the buyer's money is held).
    id: `dispute-${trade.trade_id}`,
    fields: [{ name: "reason", label: "dispute.reason", type: "text" }],
    submit: "dispute.submit",
    action: (body) => post(`/v1/trades/${trade.trade_id}/dispute`, body),
    done: () => reload(),
  }) : trade.state === "OPEN" && tradeForm(trade, {
    id: `weigh-${trade.trade_id}`,
    fields: [
      { name: "heads_delivered", label: "weigh.heads", type: "int", value: trade.heads },
      { name: "total_weight", to: "total_weight_g", label: "weigh.weight", type: "kg" },
      { name: "quarantine_cert", label: "weigh.cert", type: "text" },
      { name: "heads_refused", label: "weigh.refused", type: "int", value: 0 },
      { name: "unfasted", label: "weigh.unfasted", type: "checkbox" },
      { name: "quarantine_checked", label: "weigh.checked", type: "checkbox" },
    ],
    submit: "weigh.submit",
    action: (body) => post(`/v1/trades/${trade.trade_id}/weigh-in`, body),
    done: () => reload(),
  })), "deliveries");
  const parts = [card(t("farmer.new_lot"), lotForm), lots, card(t("sell.title"), sellForm), orders,
    card(t("auction.offer"), offer), myAuctions, trades,
    balancesSection(), payoutsSection(), loansSection()];
  if (ctx.session.role === "cooperative") parts.push(section(t("coop.members"), async () => {
    const profile = await get("/v1/profile");
    return table([
      { label: t("op.participant_id"), value: (r) => r[0] },
      { label: "bps", value: (r) => r[1], num: true },
    ], profile.member_ids.map((id, i) => [id, profile.shares_bps[i]]));
  }, "members"));
  const root = h("div", {}, h("h1", {}, t("farmer.title")), h("div", { class: "grid" }, parts));
  await Promise.all(parts.filter((p) => p.reload).map((p) => p.reload()));
  follow(instruments, [orders, lots, trades], [myAuctions]);
  return root;
}

let feed = null;

// A fill shows without reloading the page: every public trade of a listed instrument redraws the
// sections it may have changed. `live` sections follow channels of their own on the same feed, which
// lives as long as the page (`stop`).
export function follow(instruments, sections, live = []) {
  stop();
  feed = new Feed();
  for (const i of instruments) feed.subscribe(`trades.${i.symbol}`, () => sections.forEach((s) => s.reload()));
  for (const s of live) s.follow(feed);
}

export function stop() {
  if (feed) feed.close();
  feed = null;
}
