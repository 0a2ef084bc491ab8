// A bank's or guarantee fund's page: consenting clients, credit lines, advances, loans, the report.
import { get, post } from "../api.js";
import { yuan } from "../format.js";
import { t } from "../i18n.js";
import { button, form, h, table } from "../ui.js";
import { card, section } from "./common.js";

export async function render() {
  const clients = section(t("fin.clients"), async (reload) => {
    const portfolio = await get("/v1/financing/clients");
    const loans = portfolio.clients.flatMap((c) => c.loans || []);
    return h("div", {}, table([
      { label: t("op.participant_id"), value: (c) => c.participant_id },
      { label: t("fin.credit"), value: (c) => yuan(c.credit_line_available_fen), num: true },
      { label: t("balances.held"), value: (c) => yuan(c.credit_line_held_fen), num: true },
    ], portfolio.clients), h("h2", {}, t("loans.title")), table([
      { label: t("common.id"), value: (l) => l.loan_id },
      { label: t("op.participant_id"), value: (l) => l.borrower_id },
      { label: t("loans.principal"), value: (l) => yuan(l.principal_outstanding_fen), num: true },
      { label: t("loans.interest"), value: (l) => yuan(l.interest_due_fen), num: true },
      { label: t("common.actions"), value: (l) => (l.principal_outstanding_fen > 0 ? button(t("fin.writeoff"), async () => {
        await post(`/v1/loans/${l.loan_id}/write-off`, { reason: "written off by the financier" });
        await reload();
      }) : "") },
    ], loans));
  }, "clients");
  const grant = form({
    id: "credit-form",
    fields: [
      { name: "buyer_id", label: "fin.buyer", type: "int" },
      { name: "amount", to: "amount_fen", label: "fin.limit", type: "yuan" },
      { name: "rate_bps", label: "fin.rate", type: "int" },
    ],
    submit: "fin.grant",
    action: (body) => post("/v1/credit-lines", body),
    done: () => clients.reload(),
  });
  const reduce = form({
    id: "reduce-form",
    fields: [{ name: "buyer_id", label: "fin.buyer", type: "int" }, { name: "amount", to: "amount_fen", label: "common.amount", type: "yuan" }],
    submit: "fin.reduce",
    action: ({ buyer_id: buyer, ...body }) => post(`/v1/credit-lines/${buyer}/reduce`, body),
    done: () => clients.reload(),
  });
  const advance = form({
    id: "advance-form",
    fields: [
      { name: "trade_id", label: "fin.trade", type: "int" },
      { name: "amount", to: "amount_fen", label: "common.amount", type: "yuan" },
      { name: "rate_bps", label: "fin.rate", type: "int" },
    ],
    submit: "fin.advance",
    action: (body) => post("/v1/advances", body),
    done: () => clients.reload(),
  });
  const report = section(t("fin.report"), async () => {
    const view = await get("/v1/reports/settlement");
    return table([
      { label: t("trades.trade"), value: (r) => r.trade_id },
      { label: t("common.amount"), value: (r) => yuan(r.amount_fen ?? 0), num: true },
    ], view.rows);
  }, "report");
  const parts = [clients, card(t("fin.credit"), grant, reduce), card(t("fin.advance"), advance), report];
  const root = h("div", {}, h("h1", {}, t("fin.title")), h("div", { class: "grid" }, parts));
  await Promise.all([clients.reload(), report.reload()]);
  return root;
}
