// Text in one catalogue per language (messages/zh.js, messages/en.js); Simplified Chinese by default.
import zh from "./messages/zh.js";
import en from "./messages/en.js";

const CATALOGUES = { zh, en };
let lang = localStorage.getItem("hogx.lang") === "en" ? "en" : "zh";

export function t(key, fallback) {
  const text = CATALOGUES[lang][key] ?? CATALOGUES.zh[key];
  return text ?? fallback ?? key;
}

export function language() {
  return lang;
}

export function toggleLanguage() {
  lang = lang === "zh" ? "en" : "zh";
  localStorage.setItem("hogx.lang", lang);
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
}
