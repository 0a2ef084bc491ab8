// Every figure a person sees is formatted here, from the integers the API sends: money in fen, weights
// in grams, times in ms. Parsing goes the other way on strings, so no float ever carries money.

const CST = "Asia/Shanghai";

function groupThousands(digits) {
  return digits.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

// 123456 fen -> "1,234.56" (yuan, two decimals, exact: string arithmetic only)
export function yuan(fen) {
  if (!Number.isSafeInteger(fen)) return "—";
  const sign = fen < 0 ? "-" : "";
  const digits = String(Math.abs(fen)).padStart(3, "0");
  return `${sign}${groupThousands(digits.slice(0, -2))}.${digits.slice(-2)}`;
}

// "¥28.00/kg" or "¥821.00/头": an instrument's price in its quote unit
export function price(fen, quoteUnit, t) {
  return `¥${yuan(fen)}${quoteUnit === "fen_per_head" ? t("unit.per_head") : t("unit.per_kg")}`;
}

// "28.5" -> 2850 fen; null when the text is not yuan with at most two decimals (never rounded)
export function parseYuan(text) {
  const m = /^\s*(\d{1,12})(?:\.(\d{1,2}))?\s*$/.exec(text);
  if (!m) return null;
  return Number(m[1]) * 100 + Number((m[2] || "").padEnd(2, "0"));
}

// 110250 g -> "110.250" kg
export function kg(grams) {
  if (!Number.isSafeInteger(grams)) return "—";
  const digits = String(Math.abs(grams)).padStart(4, "0");
  return `${grams < 0 ? "-" : ""}${groupThousands(digits.slice(0, -3))}.${digits.slice(-3)}`;
}

// "110.25" kg -> 110250 g; null when more than three decimals (grams are the finest unit)
export function parseKg(text) {
  const m = /^\s*(\d{1,9})(?:\.(\d{1,3}))?\s*$/.exec(text);
  if (!m) return null;
  return Number(m[1]) * 1000 + Number((m[2] || "").padEnd(3, "0"));
}

const timeFormat = new Intl.DateTimeFormat("zh-CN", {
  timeZone: CST, year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit",
  second: "2-digit", hour12: false,
});

// epoch ms -> "2026/12/07 20:30:05" in China Standard Time, whatever the phone's own zone
export function cst(ms) {
  return ms ? timeFormat.format(new Date(ms)) : "—";
}

export function heads(n, t) {
  return `${n}${t("unit.heads")}`;
}

// A reference generated once per form: a double submit resends the same one, and the exchange
// answers the retry with the first result instead of acting twice.
export function newRef(prefix) {
  const bytes = new Uint8Array(9);
  crypto.getRandomValues(bytes);
  return `${prefix}-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}
