// Building blocks of every page: elements, labelled forms that show the server's errors beside the
// field, and tables. Text goes in as text nodes only (never HTML), so nothing a user typed can run.
import { t } from "./i18n.js";
import { newRef, parseKg, parseYuan } from "./format.js";

let fieldCounter = 0;

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function card(title, ...children) {
  return h("section", { class: "card" }, title ? h("h2", {}, title) : null, ...children);
}

export function table(columns, rows, empty = t("common.none")) {
  if (!rows.length) return h("p", { class: "muted" }, empty);
  return h("div", { class: "table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.num ? "num" : "", scope: "col" }, c.label)))),
    h("tbody", {}, rows.map((row) => h("tr", {}, columns.map((c) => h("td", { class: c.num ? "num" : "" },
      c.value(row))))))));
}

// Field types: text, int, yuan (-> fen), kg (-> grams), select, checkbox, textarea, password, tel.
// `to` renames the value in the request body (yuan field "price" -> "price_fen").
function convert(field, raw) {
  if (field.type === "checkbox") return raw;
  const text = raw.trim();
  if (text === "" && field.optional) return undefined;
  if (field.type === "int") return /^\d{1,15}$/.test(text) ? Number(text) : null;
  if (field.type === "yuan") return parseYuan(text);
  if (field.type === "kg") return parseKg(text);
  if (field.type === "select" && field.numeric) return Number(text);
  return raw;
}

const FORMAT_HINT = { int: "form.need_int", yuan: "form.need_yuan", kg: "form.need_kg" };

export function form(spec) {
  const inputs = new Map();
  const errors = new Map();
  const status = h("p", { class: "error", role: "alert" });
  let ref = spec.ref ? newRef(spec.ref.prefix) : null;
  const rows = spec.fields.map((field) => {
    const id = `f${++fieldCounter}`;
    const error = h("span", { class: "error", id: `${id}-error` });
    errors.set(field.to || field.name, error);
    let input;
    const common = { id, name: field.name, "aria-describedby": `${id}-error` };
    if (field.type === "select") {
      input = h("select", common, field.options.map(([value, label]) => h("option", { value }, label)));
    } else if (field.type === "textarea") {
      input = h("textarea", { ...common, rows: 4 });
    } else if (field.type === "checkbox") {
      input = h("input", { ...common, type: "checkbox" });
      inputs.set(field, input);
      return h("div", { class: "field" }, h("span", { class: "check" }, input,
        h("label", { for: id }, t(field.label))), error);
    } else {
      const type = field.type === "password" ? "password" : field.type === "tel" ? "tel" : "text";
      const mode = ["int", "yuan", "kg"].includes(field.type) ? (field.type === "int" ? "numeric" : "decimal") : null;
      input = h("input", { ...common, type, inputmode: mode, autocomplete: field.autocomplete || "off",
        placeholder: field.placeholder });
    }
    if (field.value !== undefined) input.value = String(field.value);
    inputs.set(field, input);
    return h("div", { class: "field" }, h("label", { for: id }, t(field.label)), input, error);
  });
  const button = h("button", { type: "submit" }, t(spec.submit));
  const el = h("form", { class: "form", id: spec.id, novalidate: true }, rows, status, button);
  el.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (button.disabled) return; // a double click sends once
    for (const e of errors.values()) e.textContent = "";
    status.textContent = "";
    const body = spec.fixed ? { ...spec.fixed() } : {};
    let bad = false;
    for (const [field, input] of inputs) {
      const value = convert(field, field.type === "checkbox" ? input.checked : input.value);
      if (value === null) {
        errors.get(field.to || field.name).textContent = t(FORMAT_HINT[field.type] || "form.invalid");
        bad = true;
      } else if (value !== undefined) body[field.to || field.name] = value;
    }
    if (bad) return;
    if (ref) body[spec.ref.name] = ref;
    button.disabled = true;
    try {
      const result = await spec.action(body);
      if (spec.ref) ref = newRef(spec.ref.prefix); // the next submit is a new request
      if (spec.reset !== false) for (const [field, input] of inputs) if (field.type !== "select" && field.value === undefined) input.value = "";
      status.className = "ok";
      status.textContent = spec.success ? spec.success(result) : t("form.done");
      if (spec.done) await spec.done(result);
    } catch (error) {
      showError(error, errors, status);
    } finally {
      button.disabled = false;
    }
  });
  return el;
}

// The server says which field is wrong in its message (`... - at `$.heads``): show it there.
function showError(error, errors, status) {
  status.className = "error";
  const where = /at `\$\.(\w+)/.exec(error.message || "");
  const target = where && errors.get(where[1]);
  const text = error.code ? `${t(`code.${error.code}`, error.code)}: ${error.message}` : String(error);
  if (target) target.textContent = text;
  else status.textContent = text;
}

export function button(label, onClick, cls = "small") {
  const b = h("button", { type: "button", class: cls }, label);
  b.addEventListener("click", async () => {
    if (b.disabled) return;
    b.disabled = true;
    try { await onClick(); } finally { b.disabled = false; }
  });
  return b;
}

export function errorText(error) {
  return error && error.code ? `${t(`code.${error.code}`, error.code)}: ${error.message}` : String(error);
}
