/* Channels live: GET /v1/channels every 2 s; dead letters listed and replayed (channels:write). */
"use strict";

(function () {
  const S = window.Stocksync;
  const { el } = S;
  const REFRESH_MS = 2000;
  const CIRCUIT = { closed: "ok", throttled: "warn", half_open: "warn", open: "bad" };
  let timer = null;
  let generation = 0;

  function circuitBadge(state) {
    return el("span", { class: "badge " + (CIRCUIT[state] || "none"), text: state.replace("_", " ") });
  }

  function workers(s) {
    const alive = s.workers.filter((w) => w.alive);
    const gone = s.workers.length - alive.length;
    return [String(alive.length), gone ? el("span", { class: "sub", text: gone + " gone" }) : null,
      ...alive.map((w) => el("span", { class: "sub", text: w.consumer }))];
  }

  function actions(name, s, session) {
    const out = [];
    if (s.dead_letters > 0) {
      out.push(el("button", { type: "button", class: "secondary", "data-action": "list", "data-channel": name,
        onclick: () => listDead(name), text: "List dead letters" }));
      if (session.can("channels:write")) {
        out.push(el("button", { type: "button", "data-action": "replay", "data-channel": name,
          onclick: (ev) => replay(name, ev.target), text: "Replay " + s.dead_letters }));
      }
    }
    return out;
  }

  function row(name, s, session) {
    const since = s.last_push_ms ? S.age(Date.now() - s.last_push_ms) + " ago" : "-";
    return el("tr", { "data-channel": name },
      el("th", { scope: "row", text: name }),
      el("td", {}, circuitBadge(s.circuit)),
      el("td", {}, ...workers(s)),
      el("td", { class: "num", text: S.num(s.lag) }),
      el("td", { class: "num", text: S.num(s.pending) }),
      el("td", { class: "num", text: S.age(s.oldest_pending_age_ms) }),
      el("td", { class: "num", text: S.num(s.dead_letters) }),
      el("td", { text: since }),
      el("td", { class: "num", text: s.oversell_risk_units.toFixed(2) }),
      el("td", {}, ...actions(name, s, session)));
  }

  function riskRows(channels) {
    const top = Math.max(0, ...Object.values(channels).map((s) => s.oversell_risk_units));
    return Object.entries(channels).map(([name, s]) => {
      const fill = el("span");
      fill.style.width = (top > 0 ? (100 * s.oversell_risk_units) / top : 0) + "%";
      return el("tr", { "data-channel": name }, el("th", { scope: "row", text: name }),
        el("td", { class: "num", text: s.oversell_risk_units.toFixed(2) }),
        el("td", {}, el("div", { class: "bar", role: "presentation" }, fill)));
    });
  }

  async function refresh(session) {
    try {
      const { channels } = await S.api("GET", "/v1/channels");
      const names = Object.keys(channels);
      document.querySelector("#channels tbody").replaceChildren(
        ...(names.length ? names.map((n) => row(n, channels[n], session))
          : [el("tr", {}, el("td", { colspan: 10, text: "No channel is configured." }))]));
      document.querySelector("#risk tbody").replaceChildren(...riskRows(channels));
      document.getElementById("updated").textContent = "Updated " + S.time(Date.now()).slice(11) + ".";
    } catch (e) {
      S.notice("Could not read the channels: " + e.message, "error");
    }
  }

  /* One refresh loop per sign-in (a new one ends the old); a hidden tab asks nothing until shown again. */
  function start(session) {
    const mine = ++generation;
    clearTimeout(timer);
    const tick = async () => {
      if (mine !== generation || S.session !== session) return;
      if (!document.hidden) await refresh(session);
      if (mine === generation && S.session === session) timer = setTimeout(tick, REFRESH_MS);
    };
    return tick();
  }

  async function listDead(name) {
    try {
      const reply = await S.api("GET", "/v1/channels/" + encodeURIComponent(name) + "/dead-letters?limit=200");
      document.getElementById("dead-title").textContent = "Dead letters of " + name;
      document.querySelector("#dead-letters tbody").replaceChildren(...reply.dead_letters.map((d) =>
        el("tr", {}, el("td", { text: d.id }), el("td", { class: "sku", text: d.sku }),
          el("td", { class: "num", text: d.version }), el("td", { text: d.reason }),
          el("td", { class: "num", text: d.attempts }), el("td", { text: d.error }), el("td", { text: S.time(d.ts_ms) }))));
      document.getElementById("dead").hidden = false;
    } catch (e) {
      S.notice("Could not list the dead letters of " + name + ": " + e.message, "error");
    }
  }

  async function replay(name, button) {
    button.disabled = true;
    try {
      const r = await S.api("POST", "/v1/channels/" + encodeURIComponent(name) + "/dead-letters:replay",
        { body: {}, accept: [502] });
      const failed = Object.entries(r.failed || {});
      const text = name + ": replayed " + r.resolved.length + " SKU(s)" +
        (r.resolved.length ? " (" + r.resolved.join(", ") + ")" : "") +
        (failed.length ? "; failed: " + failed.map(([s, why]) => s + ": " + why).join("; ") : ".");
      S.notice(text, failed.length ? "error" : "ok");
      document.getElementById("dead").hidden = true;
    } catch (e) {
      S.notice("Replay of " + name + " refused: " + e.message, "error");
    }
    button.disabled = false;
    await refresh(S.session);
  }

  window.StocksyncChannels = { replay };
  S.page(start);
  document.addEventListener("visibilitychange", () => { if (!document.hidden && S.session) refresh(S.session); });
})();
