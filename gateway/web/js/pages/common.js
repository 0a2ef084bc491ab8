// Sections several roles' pages share: orders, funds, trades, payouts, loans, statement.
import { call, get } from "../api.js";
import { cst, heads, kg, yuan } from "../format.js";
import { t } from "../i18n.js";
import { button, card, errorText, form, h, table } from "../ui.js";

// A section that reloads itself: `load` returns its content; `reload()` redraws it in place. Reloads
// may overlap (a live message during a fetch): only the latest one's content is shown, so an older
// fetch that answers last never puts back what a newer one replaced.
export function section(title, load, id) {
  const box = h("div", { id });
  const el = card(title, box);
  let latest = 0;
  el.reload = async () => {
    const mine = ++latest;
    let content;
    try { content = await load(el.reload); } catch (error) { content = h("p", { class: "error" }, errorText(error)); }
    if (mine === latest) box.replaceChildren(content);
  };
  return el;
}

export function ordersSection() {
  return section(t("orders.title"), async (reload) => {
    const page = await get("/v1/orders?limit=50");
    return table([
      { label: t("common.id"), value: (o) => o.order_id },
      { label: t("orders.side"), value: (o) => t(`side.${o.side}`) },
      { label: t("orders.price"), value: (o) => yuan(o.price_fen), num: true },
      { label: t("orders.qty"), value: (o) => heads(o.quantity_heads, t), num: true },
      { label: t("orders.filled"), value: (o) => heads(o.filled_heads, t), num: true },
      { label: t("orders.status"), value: (o) => h("span", { class: "badge", "data-order-status": o.status }, o.status) },
      { label: t("common.actions"), value: (o) => (["NEW", "PARTIALLY_FILLED"].includes(o.status)
        ? button(t("common.cancel"), async () => { await call("DELETE", `/v1/orders/${o.order_id}`); await reload(); }) : "") },
    ], page.orders);
  }, "orders");
}

export function balancesSection() {
  return section(t("balances.title"), async () => {
    const view = await get("/v1/balances");
    return table([
      { label: t("balances.account"), value: (a) => a.kind + (a.counterparty_id ? ` #${a.counterparty_id}` : "") },
      { label: t("common.amount"), value: (a) => yuan(a.balance_fen), num: true },
      { label: t("balances.held"), value: (a) => yuan(a.held_fen), num: true },
      { label: t("balances.available"), value: (a) => yuan(a.available_fen), num: true },
    ], view.accounts);
  }, "balances");
}

// Trades with their settlement; `actions(trade, reload)` adds what this role may do with each. A
// form already on screen for a trade is kept across reloads, so what a person is typing survives a
// live update.
export function tradesSection(title, actions, id = "trades") {
  const kept = new Map();
  return section(title, async (reload) => {
    const page = await get("/v1/settlement/trades?limit=50");
    const forms = [];
    const seen = new Set();
    for (const trade of page.trades) {
      const key = `${trade.trade_id}:${trade.state}`;
      seen.add(key);
      if (!kept.has(key)) kept.set(key, actions(trade, reload) || null);
      if (kept.get(key)) forms.push(kept.get(key));
    }
    for (const key of [...kept.keys()]) if (!seen.has(key)) kept.delete(key);
    return h("div", {}, table([
      { label: t("trades.trade"), value: (r) => r.trade_id },
      { label: t("market.price"), value: (r) => `${yuan(r.price_fen)} × ${r.heads}`, num: true },
      { label: t("trades.state"), value: (r) => h("span", { class: "badge", "data-trade-state": r.state }, r.state) },
      { label: t("common.amount"), value: (r) => (r.amount_fen ? yuan(r.amount_fen) : "—"), num: true },
      { label: t("weigh.weight"), value: (r) => (r.total_weight_g ? kg(r.total_weight_g) : "—"), num: true },
    ], page.trades), forms);
  }, id);
}

export function payoutsSection() {
  return section(t("payouts.title"), async () => {
    const page = await get("/v1/payouts?limit=50");
    return table([
      { label: t("common.id"), value: (p) => p.payout_id },
      { label: t("payouts.amount"), value: (p) => yuan(p.amount_fen), num: true },
      { label: t("payouts.priority"), value: (p) => p.priority },
      { label: t("common.state"), value: (p) => h("span", { class: "badge", "data-payout-state": p.state }, p.state) },
      { label: t("common.time"), value: (p) => cst(p.updated_ms) },
    ], page.payouts);
  }, "payouts");
}

export function loansSection() {
  return section(t("loans.title"), async () => {
    const page = await get("/v1/loans");
    return table([
      { label: t("common.id"), value: (l) => l.loan_id },
      { label: t("loans.principal"), value: (l) => yuan(l.principal_outstanding_fen), num: true },
      { label: t("loans.interest"), value: (l) => yuan(l.interest_due_fen), num: true },
    ], page.loans || []);
  }, "loans");
}

export function statementSection() {
  return section(t("statements.title"), async () => {
    const page = await get("/v1/statements?limit=50");
    const lines = page.lines || page.postings || [];
    return table([
      { label: t("common.time"), value: (l) => cst(l.time_ms) },
      { label: t("balances.account"), value: (l) => l.kind || l.code || "" },
      { label: t("common.amount"), value: (l) => yuan(l.amount_fen ?? l.change_fen ?? 0), num: true },
    ], lines);
  }, "statement");
}

export function tradeForm(trade, spec) {
  return h("div", { class: "card", "data-trade": trade.trade_id }, h("h2", {}, `${t("trades.trade")} ${trade.trade_id}`), form(spec));
}

export { card };
