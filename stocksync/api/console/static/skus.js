/* The SKU grid: GET /v1/skus:listings by prefix and page (the cursor of GET /v1/skus), with what each
 * channel lists and whether it accepted the SKU's latest version. */
"use strict";

(function () {
  const S = window.Stocksync;
  const { el } = S;
  const FIELDS = ["on_hand", "committed", "reserved", "available"]; // shown where the SKU hashes hold them
  const MAX_EMPTY = 50; // pages read through at most when a rare prefix leaves pages empty
  let cursors = [null]; // the cursor of each page read so far (the first: none)
  let at = 0;

  function form() {
    return { prefix: document.getElementById("prefix").value, limit: document.getElementById("limit").value };
  }

  function state(c, version) {
    if (c.current) return el("span", { class: "badge ok", text: "current" });
    if (!c.accepted_version) return el("span", { class: "badge none", text: "never" });
    return el("span", { class: "badge warn", text: "behind: v" + c.accepted_version + " of v" + version });
  }

  function header(fields, channels) {
    return el("tr", {}, el("th", { scope: "col", text: "SKU" }),
      ...fields.map((f) => el("th", { scope: "col", class: "num", text: f.replace("_", " ") })),
      el("th", { scope: "col", class: "num", text: "version" }),
      ...Object.entries(channels).map(([name, r]) => el("th", { scope: "col", title: rulesText(r) },
        name, el("span", { class: "sub", text: rulesText(r) }))));
  }

  function rulesText(r) {
    const parts = [];
    if (r.buffer) parts.push("buffer " + r.buffer);
    if (r.share !== 100) parts.push("share " + r.share + "%");
    if (r.max_listed) parts.push("max " + r.max_listed);
    if (r.end_when) parts.push("end when <= " + r.end_when);
    return parts.join(", ") || "as is";
  }

  function row(s, fields, channels) {
    const link = el("a", { href: "/console/history" + S.q({ sku: s.sku }), text: s.sku });
    return el("tr", { "data-sku": s.sku }, el("th", { scope: "row", class: "sku" }, link),
      ...fields.map((f) => el("td", { class: "num", text: S.num(s.stock[f]) })),
      el("td", { class: "num", text: S.num(s.version) }),
      ...Object.keys(channels).map((name) => {
        const c = s.channels[name];
        return el("td", { "data-channel": name }, (c.auto_buffer ? "<= " : "") + S.num(c.listed) + " ",
          state(c, s.version));
      }));
  }

  async function load() {
    const { prefix, limit } = form();
    let reply = null;
    let cursor = cursors[at];
    for (let i = 0; i < MAX_EMPTY; i++) { // a page may be empty while more follow: read on
      reply = await S.api("GET", "/v1/skus:listings" + S.q({ prefix, limit, cursor }));
      if (reply.skus.length || !reply.next_cursor) break;
      cursor = reply.next_cursor;
    }
    const fields = FIELDS.filter((f) => f === "available" || reply.skus.some((s) => f in s.stock));
    const table = document.getElementById("grid");
    table.querySelector("thead").replaceChildren(header(fields, reply.channels));
    const width = fields.length + 2 + Object.keys(reply.channels).length;
    table.querySelector("tbody").replaceChildren(...(reply.skus.length
      ? reply.skus.map((s) => row(s, fields, reply.channels))
      : [el("tr", {}, el("td", { colspan: width, text: "No SKU" + (prefix ? " starts with " + prefix : "") + "." }))]));
    cursors = cursors.slice(0, at + 1).concat(reply.next_cursor ? [reply.next_cursor] : []);
    document.getElementById("grid-caption").textContent = reply.skus.length + " SKU(s) on page " + (at + 1) +
      (prefix ? ", prefix " + prefix : "") + (reply.next_cursor ? "; more follow" : "; the last page");
    document.getElementById("page-label").textContent = "Page " + (at + 1);
    document.getElementById("prev").disabled = at === 0;
    document.getElementById("next").disabled = !reply.next_cursor;
    const url = new URL(location.href);
    url.search = S.q({ prefix });
    history.replaceState(null, "", url);
  }

  async function go(step) {
    at = step === 0 ? 0 : at + step;
    if (step === 0) cursors = [null];
    try {
      S.notice("");
      await load();
    } catch (e) {
      S.notice("Could not read the SKUs: " + e.message, "error");
    }
  }

  S.page(() => {
    const prefix = new URLSearchParams(location.search).get("prefix");
    if (prefix) document.getElementById("prefix").value = prefix;
    document.getElementById("search").addEventListener("submit", (ev) => { ev.preventDefault(); go(0); });
    document.getElementById("next").addEventListener("click", () => go(1));
    document.getElementById("prev").addEventListener("click", () => go(-1));
    return go(0);
  });
})();
