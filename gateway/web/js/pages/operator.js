// The market operator's page: participants and their people, instruments, deposits, disputes,
// payout runs with the bank file and its confirmations, and the fee schedule.
import { call, get, post } from "../api.js";
import { cst, yuan } from "../format.js";
import { t } from "../i18n.js";
import { button, errorText, form, h, table } from "../ui.js";
import { card, payoutsSection, section } from "./common.js";

const ROLES = ["farmer", "cooperative", "buyer", "financier", "operator"];

export async function render() {
  const invitations = h("div", { id: "invitations" });
  const participants = section(t("op.participants"), async (reload) => {
    const list = await get("/v1/admin/participants");
    return table([
      { label: t("op.participant_id"), value: (p) => p.participant_id },
      { label: t("op.role"), value: (p) => t(`role.${p.role}`) },
      { label: t("op.name"), value: (p) => p.name },
      { label: t("common.actions"), value: (p) => h("span", { "data-participant": p.participant_id },
        button(t("op.invite"), () => invite(p, invitations)), " ",
        button(t("op.people"), () => people(p, invitations, reload))) },
    ], list);
  }, "participants");
  const register = form({
    id: "register-form",
    fields: [
      { name: "role", label: "op.role", type: "select", options: ROLES.map((r) => [r, t(`role.${r}`)]) },
      { name: "name", label: "op.name", type: "text" },
      { name: "bank_account", label: "op.bank", type: "text", optional: true },
      { name: "poor_registration_no", label: "op.poor_no", type: "text", optional: true },
    ],
    submit: "op.register_submit",
    success: (issued) => `${t("op.participant_id")} ${issued.participant_id}`,
    action: (body) => post("/v1/admin/participants", body),
    done: () => participants.reload(),
  });
  const verifyBank = form({
    id: "verify-bank-form",
    fields: [{ name: "participant_id", label: "op.participant_id", type: "int" }, { name: "bank_account", label: "op.bank", type: "text" }],
    submit: "op.verify_bank",
    action: ({ participant_id: id, ...body }) => post(`/v1/admin/participants/${id}/bank-account/verify`, body),
  });
  const verifyPoor = form({
    id: "verify-poor-form",
    fields: [{ name: "participant_id", label: "op.participant_id", type: "int" },
      { name: "registration_no", label: "op.poor_no", type: "text" }],
    fixed: () => ({ verified: true }),
    submit: "op.verify_poor",
    action: ({ participant_id: id, ...body }) => post(`/v1/admin/participants/${id}/poor-household`, body),
  });
  const instruments = section(t("op.instruments"), async (reload) => table([
    { label: t("op.symbol"), value: (i) => i.symbol },
    { label: t("market.state"), value: (i) => i.state },
    { label: t("common.actions"), value: (i) => h("span", {},
      ...[["halt", "op.halt"], ["resume", "op.resume"], ["auction", "op.auction"], ["uncross", "op.uncross"]].map(
        ([action, label]) => button(t(label), async () => { await post(`/v1/instruments/${i.symbol}/${action}`); await reload(); }))) },
  ], await get("/v1/instruments")), "instruments");
  const listing = form({
    id: "instrument-form",
    fields: [
      { name: "symbol", label: "op.symbol", type: "text" },
      { name: "product_class", label: "op.product_class", type: "select",
        options: [["finishing_hog", t("product.finishing_hog")], ["piglet", t("product.piglet")]] },
      { name: "breed_class", label: "op.breed_class", type: "select",
        options: ["wai_san_yuan", "nei_san_yuan", "tu_za"].map((b) => [b, t(`breed.${b}`)]) },
      { name: "delivery_point", label: "op.delivery_point", type: "text", value: "荣昌, 重庆" },
      { name: "reference", to: "reference_price_fen", label: "market.reference", type: "yuan" },
      { name: "tick", to: "tick_fen", label: "op.tick", type: "yuan", value: "0.10" },
      { name: "price_band_bps", label: "op.band_bps", type: "int", value: 400 },
    ],
    // The weight bands of the standard grade (DOMAIN.md: lot average 100-120 kg, each 90-140 kg).
    fixed: () => ({ lot_avg_min_g: 100_000, lot_avg_max_g: 120_000, animal_min_g: 90_000, animal_max_g: 140_000,
      min_order_heads: 1, max_order_heads: 500 }),
    submit: "op.list",
    action: (body) => post("/v1/instruments", body),
    done: () => instruments.reload(),
  });
  const reference = form({
    id: "reference-form",
    fields: [{ name: "instrument", label: "op.symbol", type: "text" }, { name: "price", to: "price_fen", label: "market.reference", type: "yuan" }],
    submit: "op.set_reference",
    action: ({ instrument, ...body }) => post(`/v1/instruments/${instrument}/reference-price`, body),
    done: () => instruments.reload(),
  });
  const deposit = form({
    id: "deposit-form",
    fields: [
      { name: "owner_id", label: "op.deposit_owner", type: "int" },
      { name: "account", label: "balances.account", type: "select",
        options: [["trading_cash", "trading_cash"], ["financier_funds", "financier_funds"], ["poverty_subsidy_fund", "poverty_subsidy_fund"]] },
      { name: "amount", to: "amount_fen", label: "op.deposit_amount", type: "yuan" },
    ],
    ref: { name: "deposit_ref", prefix: "dep" },
    submit: "op.deposit_submit",
    action: (body) => post("/v1/deposits", body),
  });
  const disputes = section(t("op.disputes"), async (reload) => {
    const page = await get("/v1/settlement/trades?state=DISPUTED&limit=50");
    return h("div", {}, page.trades.length ? page.trades.map((trade) => h("div", { "data-trade": trade.trade_id },
      h("p", {}, `${t("trades.trade")} ${trade.trade_id}: ${yuan(trade.amount_fen)} · ${trade.dispute_reason}`),
      form({ id: `resolve-${trade.trade_id}`, fields: [{ name: "amount", to: "amount_fen", label: "op.resolve_amount", type: "yuan" }],
        submit: "op.resolve", action: (body) => post(`/v1/trades/${trade.trade_id}/resolution`, body), done: () => reload() })))
      : h("p", { class: "muted" }, t("common.none")));
  }, "disputes");
  const payouts = payoutsSection();
  const download = h("p", { id: "bank-file" });
  const run = form({
    id: "payout-run-form", fields: [{ name: "poor_only", label: "op.verify_poor", type: "checkbox" }],
    ref: { name: "run_ref", prefix: "run" }, submit: "op.run",
    success: (r) => `${r.payouts.length} · ¥${yuan(r.total_fen)}`,
    action: (body) => post("/v1/payout-runs", body), done: () => payouts.reload(),
  });
  const file = form({
    id: "payout-file-form", fields: [], ref: { name: "file_ref", prefix: "file" }, submit: "op.file",
    action: async (body) => { await post("/v1/payout-files", body); return body.file_ref; },
    success: () => "",
    done: async (ref) => {
      download.replaceChildren(h("a", { href: `/v1/payout-files/${ref}`, download: `${ref}.csv`, id: "bank-file-link" }, `${t("op.download")} ${ref}`));
      await payouts.reload();
    },
  });
  const confirm = form({
    id: "confirm-form", fields: [{ name: "csv", label: "op.csv", type: "textarea" }],
    ref: { name: "file_ref", prefix: "conf" }, submit: "op.confirm",
    action: (body) => post("/v1/payout-confirmations", body), done: () => payouts.reload(),
  });
  const fees = form({
    id: "fee-form",
    fields: [{ name: "instrument", label: "op.symbol", type: "text" }, { name: "seller_fee_bps", label: "op.fee_bps", type: "int" }],
    submit: "op.fees", action: (body) => post("/v1/admin/fee-schedule", body),
  });
  const parts = [participants, card(t("op.register"), register), card(t("op.invite_link"), invitations),
    card(t("op.verify_bank"), verifyBank), card(t("op.verify_poor"), verifyPoor), instruments,
    card(t("op.list"), listing), card(t("op.set_reference"), reference),
    card(t("op.deposit"), deposit), disputes, payouts, card(t("op.payouts"), run, file, download, confirm),
    card(t("op.fees"), fees)];
  const root = h("div", {}, h("h1", {}, t("op.title")), h("div", { class: "grid" }, parts));
  await Promise.all(parts.filter((p) => p.reload).map((p) => p.reload()));
  return root;
}

async function invite(participant, box) {
  try {
    const made = await post(`/v1/admin/participants/${participant.participant_id}/invitations`);
    const url = `${location.origin}${made.path}`;
    box.replaceChildren(h("p", {}, `${participant.name} (${t(`role.${participant.role}`)}) · ${cst(made.expires_at_ms)}`),
      h("input", { type: "text", readonly: true, value: url, "aria-label": t("op.invite_link"), class: "invitation-url",
        "data-participant": participant.participant_id }));
  } catch (error) {
    box.replaceChildren(h("p", { class: "error" }, errorText(error)));
  }
}

async function people(participant, box, reload) {
  const list = await get(`/v1/admin/participants/${participant.participant_id}/people`);
  box.replaceChildren(table([
    { label: t("signin.phone"), value: (p) => p.phone },
    { label: t("op.name"), value: (p) => p.display_name },
    { label: t("common.state"), value: (p) => (p.revoked ? "revoked" : p.locked ? "locked" : "active") },
    { label: t("common.actions"), value: (p) => h("span", {},
      button(t("op.unlock"), async () => { await call("POST", `/v1/admin/people/${p.person_id}/unlock`); await people(participant, box, reload); }), " ",
      button(t("op.revoke"), async () => { await call("POST", `/v1/admin/people/${p.person_id}/revoke`); await people(participant, box, reload); })) },
  ], list));
}
