// The dashboard's shell: sign-in with the operator's admin key (kept in this
// tab's session storage, never in a URL), tabs, and the live event stream.

import "./style.css";
import { api, ApiError, saveKey, savedKey, StreamState, subscribe } from "./api";
import { h, notice } from "./dom";
import { onUpdate, state, update } from "./state";
import { audit } from "./views/audit";
import { batches } from "./views/batches";
import { documents } from "./views/documents";
import { keys } from "./views/keys";
import { live } from "./views/live";
import { models } from "./views/models";
import { overview } from "./views/overview";
import { playground } from "./views/playground";
import { usage } from "./views/usage";

const TABS = ["overview", "live", "keys", "usage", "audit", "models", "documents", "batches", "playground"] as const;
type Tab = (typeof TABS)[number];

const app = document.getElementById("app")!;
let unsubscribe: (() => void) | null = null;

function signIn(message?: string): void {
  unsubscribe?.();
  const key = h("input", { type: "password", name: "key", placeholder: "imp_…", autocomplete: "off", required: true, "aria-label": "Admin key" });
  const error = h("div", {}, message ? notice("error", message) : null);
  const form = h(
    "form",
    { class: "card signin" },
    h("h1", {}, "Impetus"),
    h("p", { class: "muted" }, "Paste an admin key (impetus keys create --name you --admin). It stays in this tab only."),
    key,
    h("button", { type: "submit" }, "Sign in"),
    error,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    saveKey(key.value.trim());
    try {
      await api("GET", "/v1/admin/models");
      shell();
    } catch (failure) {
      saveKey(null);
      const e = failure as ApiError;
      error.replaceChildren(
        notice("error", e.status === 401 ? "That key is not valid." : e.status === 403 ? "That key has no admin scope." : e.message),
      );
    }
  });
  app.replaceChildren(h("main", { class: "center" }, form));
  key.focus();
}

function shell(): void {
  const connection = h("span", { class: "pill", "data-test": "connection" }, "connecting");
  const banner = h("div", { class: "banner" });
  const nav = h("nav", {});
  const content = h("main", {});
  const header = h(
    "header",
    {},
    h("strong", { class: "brand" }, "Impetus"),
    nav,
    connection,
    h("button", { class: "small ghost", onclick: () => { saveKey(null); signIn(); } }, "Sign out"),
  );
  app.replaceChildren(header, banner, content);

  let current: Tab = (location.hash.slice(1) as Tab) || "overview";
  let liveView: ReturnType<typeof live> | null = null;
  let modelsView: ReturnType<typeof models> | null = null;
  let documentsView: ReturnType<typeof documents> | null = null;
  let batchesView: ReturnType<typeof batches> | null = null;

  function render(): void {
    if (!TABS.includes(current)) current = "overview";
    nav.replaceChildren(
      ...TABS.map((tab) =>
        h("a", { href: `#${tab}`, class: tab === current ? "active" : "", "aria-current": tab === current ? "page" : undefined }, tab[0].toUpperCase() + tab.slice(1)),
      ),
    );
    liveView?.dispose();
    liveView = null;
    modelsView?.dispose();
    modelsView = null;
    documentsView?.dispose();
    documentsView = null;
    batchesView?.dispose();
    batchesView = null;
    if (current === "overview") content.replaceChildren(overview());
    if (current === "live") {
      liveView = live();
      content.replaceChildren(liveView.element);
      liveView.refresh();
    }
    if (current === "keys") content.replaceChildren(keys());
    if (current === "usage") content.replaceChildren(usage());
    if (current === "audit") content.replaceChildren(audit());
    if (current === "models") {
      modelsView = models();
      content.replaceChildren(modelsView.element);
    }
    if (current === "documents") {
      documentsView = documents();
      content.replaceChildren(documentsView.element);
    }
    if (current === "batches") {
      batchesView = batches();
      content.replaceChildren(batchesView.element);
    }
    if (current === "playground") content.replaceChildren(playground());
  }

  window.onhashchange = () => {
    current = (location.hash.slice(1) as Tab) || "overview";
    render();
  };
  onUpdate(() => {
    if (current === "overview") content.replaceChildren(overview());
    if (current === "live") liveView?.refresh();
    const redis = state.live?.redis;
    banner.replaceChildren(
      redis && redis !== "ok" && redis !== "not used" ? notice("warning", "Redis is unreachable: the server runs in degraded mode.") : "",
    );
  });

  function onState(value: StreamState, detail?: string): void {
    if (value === "unauthorized") {
      saveKey(null);
      signIn(detail ?? "The key was refused.");
      return;
    }
    connection.textContent = value;
    connection.className = `pill ${value}`;
    if (value === "reconnecting") banner.replaceChildren(notice("error", "The server cannot be reached. Reconnecting…"));
    if (value === "live" && banner.textContent?.startsWith("The server cannot")) banner.replaceChildren();
  }

  unsubscribe?.();
  unsubscribe = subscribe("/v1/admin/events", update, onState);
  render();
}

if (savedKey()) shell();
else signIn();
