// A buyer's page: funds, bids (place, amend, cancel), deliveries (dispute, reject), statement.
import { call, get, post } from "../api.js";
import { t } from "../i18n.js";
import { form, h } from "../ui.js";
import { auctionsSection } from "./auctions.js";
import { balancesSection, card, loansSection, ordersSection, statementSection, tradeForm, tradesSection } from "./common.js";
import { follow } from "./farmer.js";

export { stop } from "./farmer.js";

export async function render() {
  const instruments = await get("/v1/instruments");
  const orders = ordersSection();
  const balances = balancesSection();
  const bidForm = form({
    id: "bid-form",
    fields: [
      { name: "instrument", label: "bid.instrument", type: "select", options: instruments.map((i) => [i.symbol, i.symbol]) },
      { name: "quantity_heads", label: "bid.heads", type: "int" },
      { name: "price", to: "price_fen", label: "bid.price", type: "yuan" },
    ],
    fixed: () => ({ side: "buy" }),
    ref: { name: "client_order_id", prefix: "bid" },
    submit: "bid.submit",
    action: (body) => post("/v1/orders", body),
    done: async () => { await orders.reload(); await balances.reload(); },
  });
  const amendForm = form({
    id: "amend-form",
    fields: [
      { name: "order_id", label: "common.id", type: "int" },
      { name: "price", to: "price_fen", label: "amend.price", type: "yuan" },
    ],
    submit: "amend.submit",
    action: (body) => {
      const { order_id: orderId, ...change } = body;
      return call("PATCH", `/v1/orders/${orderId}`, change);
    },
    done: () => orders.reload(),
  });
  const trades = tradesSection(t("deliveries.title"), (trade, reload) => {
    if (trade.state !== "DELIVERED") return null;
    const dispute = tradeForm(trade, {
      id: `dispute-${trade.trade_id}`,
      fields: [{ name: "reason", label: "dispute.reason", type: "text" }],
      submit: "dispute.submit",
      action: (body) => post(`/v1/trades/${trade.trade_id}/dispute`, body),
      done: () => reload(),
    });
    if (trade.grade === "OUT_OF_GRADE") {
      dispute.append(form({ id: `reject-${trade.trade_id}`, fields: [], submit: "reject.submit",
        action: () => post(`/v1/trades/${trade.trade_id}/rejection`), done: () => reload() }));
    }
    return dispute;
  }, "deliveries");
  const auctions = auctionsSection({ canBid: true });
  const parts = [card(t("bid.title"), bidForm), orders, auctions,
    card(t("amend.submit"), amendForm), balances, trades,
    loansSection(), statementSection()];
  const root = h("div", {}, h("h1", {}, t("buyer.title")), h("div", { class: "grid" }, parts));
  await Promise.all(parts.filter((p) => p.reload).map((p) => p.reload()));
  follow(instruments, [orders, balances, trades], [auctions]);
  return root;
}
