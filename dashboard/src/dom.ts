// A tiny element builder and the formatters every view uses.

type Child = Node | string | number | null | undefined | false;

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: Record<string, any> = {},
  ...children: (Child | Child[])[]
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") element.addEventListener(name.slice(2), value);
    else if (name === "class") element.className = value;
    else if (name in element && typeof value !== "string") (element as any)[name] = value;
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

export function bytes(n: number | null | undefined): string {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i++;
  }
  return `${n.toFixed(n < 10 && i ? 1 : 0)} ${units[i]}`;
}

export function number(n: number | null | undefined, digits = 1): string {
  return n === null || n === undefined || Number.isNaN(n) ? "–" : n.toFixed(digits);
}

export function duration(seconds: number): string {
  const d = Math.floor(seconds / 86400);
  const hms = new Date(seconds * 1000).toISOString().slice(11, 19);
  return d ? `${d}d ${hms}` : hms;
}

export function when(timestamp: number | null | undefined): string {
  return timestamp ? new Date(timestamp * 1000).toLocaleString() : "never";
}

export function notice(kind: "error" | "info" | "warning", text: string): HTMLElement {
  return h("div", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
}

export function empty(text: string): HTMLElement {
  return h("p", { class: "empty" }, text);
}

// A table: its column headings, then one row per item.
export function table(props: Record<string, any>, columns: string[], rows: Node[]): HTMLTableElement {
  return h("table", props, h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, c)))), h("tbody", {}, rows));
}
