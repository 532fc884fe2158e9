/* Rejections to act on: GET /v1/rejections; apply again and resolve (orders:write), fix a SKU map
 * (channels:write). */
"use strict";

(function () {
  const S = window.Stocksync;
  const { el } = S;
  const ACTION = { cancel: "bad", fix_map: "warn", none: "none" };
  const enc = encodeURIComponent;

  function orderPath(o) {
    return "/v1/rejections/" + enc(o.channel) + "/" + enc(o.order_id);
  }

  function mapForm(o, line) {
    const id = ("map-" + o.channel + "-" + o.order_id + "-" + line.line_id).replace(/\s/g, "_");
    const input = el("input", { id, type: "text", autocomplete: "off", spellcheck: "false", required: true,
      value: line.sku && line.sku !== line.channel_sku ? line.sku : "" });
    return el("form", { class: "mapform", "data-channel-sku": line.channel_sku, onsubmit: (ev) => {
      ev.preventDefault();
      saveMap(o.channel, line.channel_sku, input.value.trim());
    } }, el("label", { for: id, text: "Map " + line.channel_sku + " to SKU" }), input,
    el("button", { type: "submit", class: "secondary", text: "Save map" }));
  }

  function lineRow(o, line, session) {
    const canMap = line.action === "fix_map" && line.channel_sku && session.can("channels:write");
    return el("tr", { "data-line": line.line_id }, el("td", { text: line.line_id }),
      el("td", { class: "sku", text: line.channel_sku || "-" }), el("td", { class: "sku", text: line.sku || "-" }),
      el("td", { class: "num", text: S.num(line.qty) }),
      el("td", { class: "num", text: line.available === null ? "-" : S.num(line.available) }),
      el("td", { text: line.reason }),
      el("td", {}, el("span", { class: "badge " + (ACTION[line.action] || "none"), text: line.action })),
      el("td", {}, line.hint, canMap ? mapForm(o, line) : null));
  }

  function order(o, session) {
    const buttons = [];
    if (session.can("orders:write")) {
      if (o.lines.some((l) => l.action === "fix_map")) {
        buttons.push(el("button", { type: "button", "data-action": "apply", onclick: () => apply(o),
          text: "Apply again" }));
      }
      buttons.push(el("button", { type: "button", class: "danger", "data-action": "resolve", onclick: () => resolve(o),
        text: "Resolve" }));
    }
    const title = o.channel + " order " + o.order_id;
    return el("section", { class: "order", "data-order": o.channel + "|" + o.order_id, "aria-label": title },
      el("h3", {}, title, el("span", { class: "sub", text: "first refused " + S.time(o.ts_ms) })),
      el("div", { class: "scroll" }, el("table", { class: "grid" },
        el("caption", { text: o.lines.length + " line(s) that could not be covered" }),
        el("thead", {}, el("tr", {}, ...["Line", "Channel SKU", "SKU", "Qty", "Available then", "Reason", "Action", "What to do"]
          .map((h) => el("th", { scope: "col", text: h })))),
        el("tbody", {}, ...o.lines.map((l) => lineRow(o, l, session))))),
      buttons.length ? el("div", { class: "actions" }, ...buttons) : null);
  }

  async function reload() {
    try {
      const { rejections } = await S.api("GET", "/v1/rejections?limit=200");
      document.getElementById("orders").replaceChildren(...(rejections.length
        ? rejections.map((o) => order(o, S.session))
        : [el("p", { class: "empty", text: "No rejected order: nothing to act on." })]));
    } catch (e) {
      S.notice("Could not read the rejections: " + e.message, "error");
    }
  }

  async function act(what, run) {
    try {
      S.notice(await run(), "ok");
    } catch (e) {
      S.notice(what + " refused: " + e.message, "error");
    }
    await reload();
  }

  function apply(o) {
    return act("Apply", async () => {
      const r = await S.api("POST", orderPath(o) + ":apply");
      const taken = r.lines.filter((l) => l.status === "ok").length;
      return o.channel + " order " + o.order_id + ": " + taken + " line(s) taken, " + r.remaining.length +
        " still listed" + (r.remaining.length ? " (" + r.remaining.map((l) => l.line_id + ": " + l.reason).join(", ") + ")" : "") + ".";
    });
  }

  function resolve(o) {
    return act("Resolve", async () => {
      await S.api("DELETE", orderPath(o));
      return o.channel + " order " + o.order_id + " resolved.";
    });
  }

  function saveMap(channel, channelSku, sku) {
    return act("Saving the map", async () => {
      await S.api("PUT", "/v1/channels/" + enc(channel) + "/sku-map/" + enc(channelSku), { body: { sku } });
      return "On " + channel + ", " + channelSku + " now maps to " + sku + ": apply the order again.";
    });
  }

  window.StocksyncRejections = { apply, resolve, saveMap };
  S.page(() => {
    document.getElementById("reload").addEventListener("click", () => { S.notice(""); reload(); });
    return reload();
  });
})();
