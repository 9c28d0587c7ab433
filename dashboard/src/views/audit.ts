// The audit trail: the latest admin actions, who made them and from where.

import { api, ApiError } from "../api";
import { empty, h, notice, when } from "../dom";

function details(detail: Record<string, unknown>): string {
  return Object.entries(detail)
    .filter(([, value]) => value !== null && value !== "" && !(Array.isArray(value) && !value.length))
    .map(([name, value]) => `${name}=${Array.isArray(value) ? value.join(",") : value}`)
    .join(" · ");
}

export function audit(): HTMLElement {
  const list = h("div", {}, empty("Loading the audit trail…"));
  async function load(): Promise<void> {
    try {
      const answer = await api("GET", "/v1/admin/audit?limit=50");
      list.replaceChildren(
        answer.data.length
          ? h(
              "table",
              { "data-test": "audit-table" },
              h("thead", {}, h("tr", {}, ["when", "who", "action", "target", "from", "details"].map((c) => h("th", {}, c)))),
              h(
                "tbody",
                {},
                answer.data.map((e: any) =>
                  h("tr", { "data-action": e.action }, h("td", {}, when(e.at)), h("td", {}, e.who), h("td", {}, h("code", {}, e.action)), h("td", {}, e.target), h("td", {}, e.address), h("td", { class: "muted" }, details(e.detail))),
                ),
              ),
            )
          : empty("No admin actions yet."),
      );
    } catch (error) {
      list.replaceChildren(notice("error", (error as ApiError).message));
    }
  }
  void load();
  return h("section", {}, h("article", { class: "card" }, h("h2", {}, "Latest admin actions"), list));
}
