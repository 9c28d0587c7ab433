// Models, hardware, uptime and versions at a glance.

import { bytes, duration, empty, h, notice } from "../dom";
import { state } from "../state";

export function overview(): HTMLElement {
  const { status, live } = state;
  if (!status || !live) return h("section", {}, empty("Waiting for the server's first report…"));
  const hw = status.hardware;
  const loaded = live.models.loaded;
  const uptime = status.uptime_s + (Date.now() / 1000 - state.statusAt);
  return h(
    "section",
    { class: "grid" },
    h(
      "article",
      { class: "card wide", "data-test": "models-card" },
      h("h2", {}, "Models"),
      loaded.length
        ? h(
            "table",
            {},
            h("thead", {}, h("tr", {}, ["model", "weights", "memory", "running", "waiting", "batch", "prefix cache"].map((c) => h("th", {}, c)))),
            h(
              "tbody",
              {},
              loaded.map((m: any) =>
                h(
                  "tr",
                  {},
                  h("td", {}, h("strong", {}, m.id), m.pinned ? h("span", { class: "tag" }, "pinned") : null, h("span", { class: "tag ok" }, "loaded")),
                  h("td", {}, m.weights_dtype),
                  h("td", {}, bytes(m.memory_bytes)),
                  h("td", {}, m.running),
                  h("td", {}, m.waiting),
                  h("td", {}, `≤ ${m.max_batch_size}`),
                  h(
                    "td",
                    { "data-test": "prefix-cache", title: "prompt prefixes kept in RAM and on disk; requests started from each" },
                    `${bytes(m.prefix_cache_bytes ?? 0)} RAM · ${m.prefix_cache_disk ? bytes(m.prefix_cache_disk_bytes ?? 0) : "off"} disk · hits ${m.prefix_hits_ram ?? 0} / ${m.prefix_hits_disk ?? 0}`,
                  ),
                ),
              ),
            ),
          )
        : empty("No model is loaded in this worker; the next request loads one."),
      h(
        "p",
        { class: "muted" },
        `${live.models.available.length} available · ${bytes(live.models.used_bytes)} of ${bytes(live.models.budget_bytes)} budget (worker ${live.models.worker_pid})`,
      ),
    ),
    hostsCard(live.hosts ?? []),
    h(
      "article",
      { class: "card" },
      h("h2", {}, "Hardware"),
      h(
        "dl",
        {},
        h("dt", {}, "CPU / chip"), h("dd", {}, hw.cpu),
        h("dt", {}, "Cores"), h("dd", {}, hw.cores),
        h("dt", {}, "Memory"), h("dd", {}, bytes(hw.memory_bytes)),
        h("dt", {}, "MLX device"), h("dd", {}, hw.mlx_device),
        h("dt", {}, "BLAS"), h("dd", {}, hw.blas),
        h("dt", {}, "Thermal state"), h("dd", { "data-test": "thermal" }, hw.thermal_state),
      ),
    ),
    h(
      "article",
      { class: "card" },
      h("h2", {}, "Server"),
      h(
        "dl",
        {},
        h("dt", {}, "Status"), h("dd", {}, status.status),
        h("dt", {}, "Uptime"), h("dd", {}, duration(uptime)),
        h("dt", {}, "Redis"), h("dd", {}, live.redis),
        h("dt", {}, "Impetus"), h("dd", {}, status.versions.impetus),
        h("dt", {}, "MLX / mlx-lm"), h("dd", {}, `${status.versions.mlx} / ${status.versions.mlx_lm}`),
        h("dt", {}, "Python"), h("dd", {}, status.versions.python),
      ),
      live.redis !== "ok" && live.redis !== "not used"
        ? notice("warning", "Redis is unreachable: keys verified earlier still work, limits are not enforced.")
        : null,
    ),
  );
}

// Every host heartbeating into this Redis (one, unless several Macs share it).
function hostsCard(hosts: any[]): HTMLElement | null {
  if (!hosts.length) return null;
  return h(
    "article",
    { class: "card wide", "data-test": "hosts-card" },
    h("h2", {}, hosts.length === 1 ? "Host" : `Hosts (${hosts.length})`),
    h(
      "table",
      {},
      h("thead", {}, h("tr", {}, ["host", "workers", "loaded", "running", "waiting", "memory", "heartbeat"].map((c) => h("th", {}, c)))),
      h(
        "tbody",
        {},
        hosts.map((host) =>
          h(
            "tr",
            { "data-host": host.address },
            h("td", {}, h("strong", {}, host.address), h("span", { class: "tag" }, host.version)),
            h("td", {}, host.workers),
            h("td", {}, host.loaded.join(", ") || "–"),
            h("td", {}, host.running),
            h("td", {}, host.waiting),
            h("td", {}, `${bytes(host.used_bytes)} of ${bytes(host.budget_bytes)}`),
            h("td", {}, `${Math.round(host.heartbeat_age_s)} s ago`),
          ),
        ),
      ),
    ),
  );
}
