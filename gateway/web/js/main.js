// The app shell: who is signed in, the navigation for their role, and hash routing between pages.
import { ApiError, call, get, setCsrf } from "./api.js";
import { t, toggleLanguage } from "./i18n.js";
import { h } from "./ui.js";
import * as market from "./pages/market.js";
import * as signin from "./pages/signin.js";
import * as farmer from "./pages/farmer.js";
import * as buyer from "./pages/buyer.js";
import * as financier from "./pages/financier.js";
import * as operator from "./pages/operator.js";

// Which page each role may open; the API refuses the calls of the others all the same.
const PAGES = {
  market: { module: market, roles: null },
  signin: { module: signin, roles: null },
  invite: { module: signin, roles: null },
  farmer: { module: farmer, roles: ["farmer", "cooperative"] },
  buyer: { module: buyer, roles: ["buyer"] },
  financier: { module: financier, roles: ["financier"] },
  operator: { module: operator, roles: ["operator"] },
};
const HOME = { farmer: "farmer", cooperative: "farmer", buyer: "buyer", financier: "financier", operator: "operator" };

const state = { session: null, current: null, generation: 0 };

async function loadSession() {
  try {
    state.session = await get("/v1/session");
    setCsrf(state.session.csrf_token);
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    state.session = null;
    setCsrf("");
  }
}

function renderChrome(page) {
  const nav = document.getElementById("nav");
  const links = [["market", t("nav.market")]];
  const role = state.session && state.session.role;
  if (role) links.push([HOME[role], t(`nav.${HOME[role]}`)]);
  nav.replaceChildren(...links.map(([name, label]) =>
    h("a", { href: `#/${name}`, "aria-current": name === page ? "page" : null }, label)));
  document.getElementById("lang").textContent = t("lang.switch");
  const who = document.getElementById("who");
  who.replaceChildren();
  if (state.session) {
    const out = h("button", { type: "button", class: "link", id: "signout" }, t("nav.signout"));
    out.addEventListener("click", signOut);
    who.append(`${state.session.display_name} · ${t(`role.${state.session.role}`)} `, out);
  } else {
    who.append(h("a", { href: "#/signin" }, t("nav.signin")));
  }
}

async function signOut() {
  try { await call("DELETE", "/v1/session"); } catch { /* already ended */ }
  state.session = null;
  setCsrf("");
  location.hash = "#/signin";
  await route();
}

export async function route() {
  const generation = ++state.generation; // a later navigation wins over a page still loading
  const [name, ...rest] = location.hash.replace(/^#\/?/, "").split("/");
  let page = PAGES[name] ? name : "market";
  const entry = PAGES[page];
  if (entry.roles && (!state.session || !entry.roles.includes(state.session.role))) {
    location.replace(`#/${state.session ? HOME[state.session.role] : "signin"}`);
    return; // the hashchange routes again
  }
  if (state.current && state.current.stop) state.current.stop();
  state.current = PAGES[page].module;
  renderChrome(page);
  const main = document.getElementById("main");
  main.replaceChildren(h("p", { class: "muted" }, "…"));
  const ctx = {
    session: state.session, args: rest, page,
    signedIn: async () => { await loadSession(); location.hash = `#/${HOME[state.session.role]}`; },
  };
  const module = state.current;
  try {
    const content = await module.render(ctx);
    if (generation === state.generation) main.replaceChildren(content);
    else if (module !== state.current && module.stop) module.stop(); // its feed must not outlive it
  } catch (error) {
    if (generation !== state.generation) return;
    if (error instanceof ApiError && error.status === 401) {
      state.session = null;
      location.hash = "#/signin";
      return;
    }
    main.replaceChildren(h("p", { class: "error" }, String(error.message || error)));
  }
}

document.getElementById("lang").addEventListener("click", () => { toggleLanguage(); route(); });
window.addEventListener("hashchange", route);
await loadSession();
await route();
