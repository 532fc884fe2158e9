/* /docs: the OpenAPI document of /openapi.json as a page: every path and method with its summary,
 * description, parameters, request body and responses, then every schema. A small renderer of the
 * parts of OpenAPI 3.1 this API uses; no token needed (the document is public). */
"use strict";

(function () {
  const S = window.Stocksync;
  const { el } = S;
  const METHODS = ["get", "put", "post", "delete", "patch"];
  let doc = null;

  const anchor = (path) => "path-" + path.replace(/[^A-Za-z0-9]+/g, "-").replace(/^-|-$/g, "");

  /* A short text for a schema: its type, constraints and a link for a $ref. */
  function schemaText(s) {
    if (!s) return "";
    if (s.$ref) {
      const name = s.$ref.split("/").pop();
      return el("a", { href: "#schema-" + name, text: name });
    }
    const parts = [];
    if (s.enum) parts.push("one of " + s.enum.map((v) => JSON.stringify(v)).join(", "));
    else if (s.const !== undefined) parts.push("= " + JSON.stringify(s.const));
    else if (s.type) parts.push([].concat(s.type).join(" | "));
    if (s.type === "array" && s.items) return el("span", {}, "array of ", schemaText(s.items), bounds(s));
    for (const [k, label] of [["minimum", ">= "], ["maximum", "<= "], ["minLength", "min length "],
      ["maxLength", "max length "], ["pattern", "pattern "]]) {
      if (s[k] !== undefined) parts.push(label + s[k]);
    }
    return parts.join(", ") || "any";
  }

  function bounds(s) {
    const out = [];
    if (s.minItems !== undefined) out.push("min " + s.minItems);
    if (s.maxItems !== undefined) out.push("max " + s.maxItems);
    return out.length ? " (" + out.join(", ") + ")" : "";
  }

  function params(list) {
    if (!list.length) return null;
    return el("table", { class: "grid" }, el("caption", { text: "Parameters" }),
      el("thead", {}, el("tr", {}, ...["Name", "In", "Required", "Schema", "Description"].map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, ...list.map((p) => el("tr", {}, el("td", {}, el("code", { text: p.name })), el("td", { text: p.in }),
        el("td", { text: p.required ? "yes" : "no" }), el("td", {}, schemaText(p.schema)),
        el("td", { text: p.description || "" })))));
  }

  function content(c) {
    return Object.entries(c || {}).map(([type, media]) => el("span", {}, el("code", { text: type }), " ",
      schemaText(media.schema), " "));
  }

  function operation(method, op, shared) {
    const body = op.requestBody ? el("p", {}, el("strong", { text: "Body: " }), ...content(op.requestBody.content)) : null;
    const responses = el("ul", {}, ...Object.entries(op.responses || {}).map(([code, r]) =>
      el("li", {}, el("strong", { text: code }), " " + (r.description || "") + " ", ...content(r.content))));
    const security = op.security ? el("p", { class: "sub", text: "Needs a bearer token." }) : null;
    return el("div", { class: "op", "data-method": method }, el("p", {},
      el("span", { class: "method " + method, text: method }), el("strong", { text: op.summary || "" })),
    op.description ? el("p", { class: "desc", text: op.description }) : null, security,
    params([...shared, ...(op.parameters || [])]), body, el("p", { text: "Responses:" }), responses);
  }

  function pathSection(path, item) {
    const shared = item.parameters || [];
    return el("section", { class: "path", id: anchor(path), "data-path": path },
      el("h3", { text: path }), ...METHODS.filter((m) => item[m]).map((m) => operation(m, item[m], shared)));
  }

  function schemaSection(name, s) {
    const required = new Set(s.required || []);
    const props = Object.entries(s.properties || {});
    return el("section", { class: "schema", id: "schema-" + name }, el("h3", { text: name }),
      s.description ? el("p", { class: "desc", text: s.description }) : null,
      props.length ? el("table", { class: "grid" },
        el("thead", {}, el("tr", {}, ...["Property", "Schema", "Required", "Description"].map((h) => el("th", { scope: "col", text: h })))),
        el("tbody", {}, ...props.map(([p, ps]) => el("tr", {}, el("td", {}, el("code", { text: p })),
          el("td", {}, schemaText(ps)), el("td", { text: required.has(p) ? "yes" : "no" }),
          el("td", { text: ps.description || "" }))))) : el("p", {}, schemaText(s)));
  }

  function filter() {
    const text = document.getElementById("path-filter").value.trim().toLowerCase();
    for (const node of document.querySelectorAll("#paths .path, #toc a")) {
      const path = node.dataset.path;
      node.hidden = Boolean(text) && !path.toLowerCase().includes(text);
    }
  }

  async function render() {
    try {
      doc = await S.api("GET", "/openapi.json");
    } catch (e) {
      return S.notice("Could not read /openapi.json: " + e.message, "error");
    }
    const paths = Object.keys(doc.paths);
    document.getElementById("info").replaceChildren(
      el("p", {}, el("strong", { text: doc.info.title + " " + doc.info.version }), " · OpenAPI " + doc.openapi +
        " · " + paths.length + " paths"),
      el("p", { class: "desc", text: doc.info.description || "" }));
    document.getElementById("toc").replaceChildren(...paths.map((p) =>
      el("a", { href: "#" + anchor(p), "data-path": p, text: p })));
    document.getElementById("paths").replaceChildren(...paths.map((p) => pathSection(p, doc.paths[p])));
    const schemas = (doc.components && doc.components.schemas) || {};
    document.getElementById("schemas").replaceChildren(...Object.entries(schemas).map(([n, s]) => schemaSection(n, s)));
    document.getElementById("path-filter").addEventListener("input", filter);
    document.getElementById("filter").addEventListener("submit", (ev) => ev.preventDefault());
  }

  S.page(render);
})();
