/* One SKU's history: GET /v1/skus:history, newest first, and what its hash holds now. */
"use strict";

(function () {
  const S = window.Stocksync;
  const { el } = S;
  let sku = null;
  let before = null;

  function facts(stock) {
    const box = document.getElementById("stock");
    const entries = stock ? Object.entries(stock) : [["state", "no such SKU (it may have existed: see its events)"]];
    box.replaceChildren(...entries.flatMap(([k, v]) => [el("dt", { text: k === "updated_ms" ? "updated" : k.replace("_", " ") }),
      el("dd", { text: k === "updated_ms" ? S.time(v) : String(v) })]));
    document.getElementById("now").hidden = false;
  }

  function row(e) {
    const sign = e.delta > 0 ? "+" : "";
    const kind = e.type === "stock.rejected" ? "badge bad" : "badge ok";
    return el("tr", { "data-id": e.id }, el("td", { text: S.time(e.ts_ms) }),
      el("td", {}, el("span", { class: kind, text: e.type })),
      el("td", { class: "num", text: sign + e.delta }), el("td", { class: "num", text: S.num(e.available) }),
      el("td", { class: "num", text: S.num(e.version) }), el("td", { text: e.source }),
      el("td", { text: e.ref }), el("td", { text: e.reason || "" }));
  }

  async function load(more) {
    const reply = await S.api("GET", "/v1/skus:history" + S.q({ sku, before: more ? before : null, limit: 100 }));
    const body = document.querySelector("#events tbody");
    const rows = reply.events.map(row);
    if (more) body.append(...rows);
    else {
      facts(reply.stock);
      const none = reply.next_before ? "No event of " + sku + " among the newest " + S.num(reply.scanned) +
        " entries of its stream: older ones follow." : "No event of " + sku + " in the stream.";
      body.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 8, text: none }))]));
    }
    before = reply.next_before;
    document.getElementById("older").hidden = !before;
    document.getElementById("events-title").textContent = "Events of " + sku + ", newest first";
    document.getElementById("events-section").hidden = false;
  }

  async function open(name, more) {
    sku = name;
    try {
      S.notice("");
      await load(more);
    } catch (e) {
      S.notice("Could not read the history of " + name + ": " + e.message, "error");
    }
  }

  S.page(() => {
    const input = document.getElementById("sku");
    document.getElementById("open").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const url = new URL(location.href);
      url.search = S.q({ sku: input.value });
      history.pushState(null, "", url);
      open(input.value, false);
    });
    document.getElementById("older").addEventListener("click", () => open(sku, true));
    const name = new URLSearchParams(location.search).get("sku");
    if (name) {
      input.value = name;
      return open(name, false);
    }
    input.focus();
  });
})();
