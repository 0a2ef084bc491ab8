// Sign-in with phone number and password, and the page an invitation link opens.
import { post } from "../api.js";
import { t } from "../i18n.js";
import { card, form, h } from "../ui.js";

export async function render(ctx) {
  if (ctx.page === "invite") return invitation(ctx, ctx.args[0] || "");
  return h("div", { class: "grid" }, card(t("signin.title"), form({
    id: "signin-form",
    fields: [
      { name: "phone", label: "signin.phone", type: "tel", autocomplete: "username" },
      { name: "password", label: "signin.password", type: "password", autocomplete: "current-password" },
    ],
    submit: "signin.submit",
    action: (body) => post("/v1/sessions", body),
    done: () => ctx.signedIn(),
  })));
}

function invitation(ctx, token) {
  return h("div", { class: "grid" }, card(t("invite.title"), form({
    id: "invite-form",
    fields: [
      { name: "phone", label: "signin.phone", type: "tel", autocomplete: "username" },
      { name: "display_name", label: "invite.name", type: "text", autocomplete: "name" },
      { name: "password", label: "invite.password", type: "password", autocomplete: "new-password" },
    ],
    fixed: () => ({ token }),
    submit: "invite.submit",
    success: () => t("invite.done"),
    action: (body) => post("/v1/invitations/accept", body),
    done: () => { setTimeout(() => { location.hash = "#/signin"; }, 800); },
  })));
}
