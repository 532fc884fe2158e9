/* stocksync console: what every page shares. Plain JavaScript, no build step, no library.
 *
 * The token is asked for once and kept in this tab's sessionStorage; every data call is a fetch of the
 * /v1 API with Authorization: Bearer (no cookie is ever set). Data is written into the page as text
 * (textContent), never as HTML. A page script calls Stocksync.page(render): render(session) runs once
 * the token is known (session.can(scope) says what it may do), or at once on a page that needs none. */
"use strict";

window.Stocksync = (function () {
  const TOKEN_KEY = "stocksync.token";
  const $ = (id) => document.getElementById(id);
  let session = null;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function notice(text, kind) {
    const box = $("notice");
    box.textContent = text;
    box.className = "notice" + (kind ? " " + kind : "");
    box.hidden = !text;
  }

  /* An Idempotency-Key for one click (getRandomValues works outside secure contexts too). */
  function newKey() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return "console-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  class ApiError extends Error {
    constructor(status, data) {
      const what = data && data.message ? data.message : "HTTP " + status;
      super(status === 403 ? "Not allowed with this token (403): " + what : what + " (" + status + ")");
      this.status = status;
      this.data = data;
    }
  }

  /* fetch an API path: resolves to the JSON reply (null for 204), rejects with an ApiError. A 401 ends the
   * session (the token was removed from the server's config, or mistyped). */
  async function api(method, path, options) {
    const opts = options || {};
    const headers = { Accept: "application/json" };
    const token = opts.token || sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = "Bearer " + token;
    if (method !== "GET") headers["Idempotency-Key"] = newKey();
    let body;
    if (opts.body !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(opts.body);
    }
    const reply = await fetch(path, { method, headers, body, cache: "no-store", credentials: "omit" });
    const text = await reply.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = { message: text.slice(0, 200) }; }
    if (reply.status === 401 && !opts.token) signOut("The token was refused (401): sign in again.");
    if (!reply.ok && !(opts.accept || []).includes(reply.status)) throw new ApiError(reply.status, data);
    return data;
  }

  const q = (params) => {
    const out = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") out.set(k, v);
    const s = out.toString();
    return s ? "?" + s : "";
  };

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    session = null;
    $("content").hidden = true;
    $("session").hidden = true;
    showLogin(message || "");
  }

  function showLogin(message) {
    $("login").hidden = false;
    $("login-error").textContent = message;
    $("token").focus();
  }

  async function begin(token, render) {
    const me = await api("GET", "/v1/whoami", { token });
    sessionStorage.setItem(TOKEN_KEY, token);
    const scopes = new Set(me.scopes);
    session = { name: me.token, scopes: me.scopes, can: (scope) => scopes.has(scope) };
    $("whoami").textContent = "Signed in as " + (me.token || "?") + " (" + (me.scopes.join(", ") || "no scope") + ")";
    $("session").hidden = false;
    $("login").hidden = true;
    $("content").hidden = false;
    await render(session);
  }

  function page(render) {
    const run = async () => {
      if (document.body.dataset.auth === "none") {
        $("content").hidden = false;
        return render(null);
      }
      $("logout").addEventListener("click", () => signOut("Signed out."));
      $("login").addEventListener("submit", async (ev) => {
        ev.preventDefault();
        const token = $("token").value.trim();
        try {
          await begin(token, render);
          $("token").value = "";
        } catch (e) {
          showLogin(e.status === 401 ? "That token is not valid (401)." : "Could not sign in: " + e.message);
        }
      });
      const saved = sessionStorage.getItem(TOKEN_KEY);
      if (!saved) return showLogin("");
      try {
        await begin(saved, render);
      } catch (e) {
        if (e.status === 401) signOut("The saved token was refused (401): sign in again.");
        else notice("Could not load: " + e.message, "error");
      }
    };
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", run);
    else run();
  }

  const pad = (n) => String(n).padStart(2, "0");
  function time(ms) {
    if (!ms) return "-";
    const d = new Date(ms);
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + pad(d.getHours()) + ":" +
      pad(d.getMinutes()) + ":" + pad(d.getSeconds()) + "." + String(d.getMilliseconds()).padStart(3, "0");
  }
  function age(ms) {
    if (ms === null || ms === undefined) return "-";
    if (ms < 1000) return ms + " ms";
    if (ms < 120000) return (ms / 1000).toFixed(1) + " s";
    return Math.round(ms / 60000) + " min";
  }
  const num = (n) => (n === null || n === undefined ? "-" : Number(n).toLocaleString("en-US"));

  return { el, api, q, notice, page, time, age, num, signOut, ApiError, get session() { return session; } };
})();
