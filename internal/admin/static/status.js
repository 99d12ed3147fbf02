// mtad's live status page. It reads the admin API every few seconds and
// updates the page in place. Everything it shows comes from the API, and
// some of it (reply texts, reasons) from remote servers or operators: it
// is only ever written with textContent or setAttribute on our own
// elements, never parsed as HTML.
"use strict";

(function () {
  const REFRESH_MS = 5000;
  const TOKEN_KEY = "mtad-admin-token";
  const LIMIT = 10;
  const COUNTS = ["received", "received_recipients", "delivered", "deferred", "bounced", "expired", "cancelled"];
  const LINES = ["received", "delivered", "deferred", "bounced"];
  // The chart's plot area, in viewBox units (index.html draws its axes).
  const X0 = 50, X1 = 630, Y0 = 170, Y1 = 20;

  const $ = (id) => document.getElementById(id);
  let timer = null;

  class Unauthorized extends Error {}
  // NotAvailable: the endpoint is not served by this daemon (404).
  const NOT_AVAILABLE = Symbol("not available");

  function token() {
    try { return sessionStorage.getItem(TOKEN_KEY) || ""; } catch (e) { return ""; }
  }

  async function api(path) {
    const headers = { "Accept": "application/json" };
    const tok = token();
    if (tok) headers["Authorization"] = "Bearer " + tok;
    const resp = await fetch(path, { headers: headers, cache: "no-store", credentials: "omit" });
    if (resp.status === 401) throw new Unauthorized(path);
    if (resp.status === 404) return NOT_AVAILABLE;
    let body = null;
    try { body = await resp.json(); } catch (e) { /* not JSON: reported below */ }
    if (!resp.ok) {
      const msg = body && typeof body.error === "string" ? body.error : "HTTP " + resp.status;
      throw new Error(path + ": " + msg);
    }
    if (body === null) throw new Error(path + ": the answer is not JSON");
    return body;
  }

  function text(id, v) { $(id).textContent = v === undefined || v === null ? "—" : String(v); }

  function bytes(n) {
    if (n === null || n === undefined) return "unknown";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let v = n, u = 0;
    while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
    return u === 0 ? n + " B" : n + " B (" + v.toFixed(1) + " " + units[u] + ")";
  }

  function showSummary(s) {
    text("since", s.since);
    for (const k of COUNTS) {
      text("tot-" + k, s.totals[k]);
      text("min-" + k, s.last_minute[k]);
    }
    text("queued_messages", s.queued_messages);
    text("queued_recipients", s.queued_recipients);
    text("connections", s.connections + " of " + s.max_connections);
    text("spool", bytes(s.spool_bytes) + " used, " + bytes(s.spool_free_bytes) + " free");
    text("suspension_count", s.suspensions);
    drawChart(s.last_hour || []);
  }

  function drawChart(hour) {
    let max = 0;
    for (const m of hour) for (const k of LINES) max = Math.max(max, m[k] || 0);
    // A round top for the scale, at least 1 so an idle hour draws flat.
    const top = Math.max(1, niceCeil(max));
    const n = hour.length;
    const dx = n > 1 ? (X1 - X0) / (n - 1) : 0;
    for (const k of LINES) {
      const pts = hour.map((m, i) => {
        const x = X0 + i * dx;
        const y = Y0 - ((m[k] || 0) / top) * (Y0 - Y1);
        return x.toFixed(1) + "," + y.toFixed(1);
      });
      $("line-" + k).setAttribute("points", pts.join(" "));
    }
    text("y-max", top);
    text("y-mid", top / 2);
    text("x-first", n ? clock(hour[0].minute) : "—");
    text("x-last", n ? clock(hour[n - 1].minute) : "—");
  }

  function niceCeil(v) {
    if (v <= 0) return 0;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const f of [1, 2, 5, 10]) if (f * p >= v) return f * p;
    return 10 * p;
  }

  function clock(iso) {
    const d = new Date(iso);
    return isNaN(d) ? String(iso) : d.toISOString().slice(11, 16) + " UTC";
  }

  // table replaces el's content with a table of rows, each cell's text
  // from cols[i].get(row); an empty list says so.
  function table(el, cols, rows, empty) {
    el.replaceChildren();
    if (!rows.length) {
      const p = document.createElement("p");
      p.className = "na";
      p.textContent = empty;
      el.appendChild(p);
      return;
    }
    const t = document.createElement("table");
    const head = t.createTHead().insertRow();
    for (const c of cols) {
      const th = document.createElement("th");
      th.textContent = c.name;
      head.appendChild(th);
    }
    const body = t.createTBody();
    for (const r of rows) {
      const tr = body.insertRow();
      for (const c of cols) {
        const td = tr.insertCell();
        const v = c.get(r);
        td.textContent = v === undefined || v === null ? "" : String(v);
        if (c.cls) td.className = c.cls;
      }
    }
    el.appendChild(t);
  }

  function notAvailable(el, why) {
    el.replaceChildren();
    const p = document.createElement("p");
    p.className = "na";
    p.textContent = why;
    el.appendChild(p);
  }

  // replyText is a reply as "550 5.1.1 text". A local error (no
  // connection, a timeout) has no reply code: the API gives code 0, and
  // only its enhanced code is shown ("4.4.1 text", not "0 4.4.1 text").
  function replyText(r) {
    const code = r.code === 0 ? "" : r.code;
    return [code, r.enhanced, r.text].filter((x) => x !== undefined && x !== null && x !== "").join(" ");
  }

  function reply(r) {
    if (!r) return "";
    return replyText(r) + (r.at ? " (" + r.at + ")" : "");
  }
  // For the browser test and the console: how a reply is written.
  window.mtadReplyText = replyText;

  function age(sec) {
    if (sec === undefined || sec === null) return "";
    if (sec < 120) return sec + " s";
    if (sec < 7200) return Math.floor(sec / 60) + " min";
    return Math.floor(sec / 3600) + " h";
  }

  const SECTIONS = [
    {
      el: "busiest", path: "/api/v1/queues?by=domain&sort=active&order=desc&limit=" + LIMIT, empty: "no queued mail",
      cols: [
        { name: "domain", get: (r) => r.domain },
        { name: "provider", get: (r) => r.provider },
        { name: "active", get: (r) => r.active, cls: "n" },
        { name: "delayed", get: (r) => r.delayed, cls: "n" },
        { name: "connections", get: (r) => r.connections, cls: "n" },
        { name: "oldest", get: (r) => age(r.oldest_seconds), cls: "n" },
      ],
    },
    {
      el: "troubled", path: "/api/v1/queues?by=domain&sort=deferred&order=desc&limit=" + LIMIT, empty: "no domain in trouble",
      cols: [
        { name: "domain", get: (r) => r.domain },
        { name: "deferred", get: (r) => r.deferred, cls: "n" },
        { name: "bounced", get: (r) => r.bounced, cls: "n" },
        { name: "delayed", get: (r) => r.delayed, cls: "n" },
        { name: "last reply", get: (r) => reply(r.last_reply), cls: "reply" },
      ],
      keep: (r) => (r.deferred || 0) + (r.bounced || 0) > 0,
    },
    {
      el: "bindings", path: "/api/v1/queues?by=binding&sort=connections&order=desc&limit=" + LIMIT, empty: "no binding in use",
      cols: [
        { name: "binding", get: (r) => r.binding },
        { name: "connections", get: (r) => r.connections, cls: "n" },
        { name: "active", get: (r) => r.active, cls: "n" },
        { name: "delayed", get: (r) => r.delayed, cls: "n" },
      ],
    },
    {
      el: "suspensions", path: "/api/v1/suspensions", empty: "none",
      list: (v) => v.suspensions || [],
      cols: [
        { name: "scope", get: (r) => r.scope },
        { name: "name", get: (r) => r.name },
        { name: "binding", get: (r) => r.binding },
        { name: "until", get: (r) => r.until },
        { name: "source", get: (r) => r.source + (r.rule ? " (" + r.rule + ")" : "") },
        { name: "reason", get: (r) => r.reason, cls: "reply" },
      ],
    },
  ];

  function showSection(sec, v) {
    const el = $(sec.el);
    if (v === NOT_AVAILABLE) {
      notAvailable(el, "not available (this mtad does not serve " + sec.path.split("?")[0] + ")");
      return;
    }
    let rows = sec.list ? sec.list(v) : (v.items || []);
    if (sec.keep) rows = rows.filter(sec.keep);
    table(el, sec.cols, rows, sec.empty);
  }

  function showError(msgs) {
    const e = $("error");
    e.textContent = msgs.join("; ");
    e.hidden = msgs.length === 0;
  }

  function askToken(note) {
    $("token-form").hidden = false;
    $("token-note").textContent = note;
    $("token").focus();
  }

  let running = false;
  async function refresh() {
    if (running) return;
    running = true;
    try {
      const paths = ["/api/v1/summary"].concat(SECTIONS.map((s) => s.path));
      const got = await Promise.allSettled(paths.map(api));
      const errors = [];
      if (got.some((g) => g.status === "rejected" && g.reason instanceof Unauthorized)) {
        askToken(token() ? "the token was refused; enter another" : "");
        showError(["not authorized: enter a token"]);
        return;
      }
      $("token-form").hidden = true;
      const sum = got[0];
      if (sum.status === "fulfilled" && sum.value !== NOT_AVAILABLE) {
        showSummary(sum.value);
      } else if (sum.status === "fulfilled") {
        errors.push("/api/v1/summary: not available");
      }
      SECTIONS.forEach((sec, i) => {
        const g = got[i + 1];
        if (g.status === "fulfilled") showSection(sec, g.value);
      });
      for (const g of got) if (g.status === "rejected") errors.push(g.reason.message || String(g.reason));
      showError(errors);
      $("refreshed").textContent = "refreshed " + new Date().toLocaleTimeString() + (errors.length ? " (with errors)" : "");
    } catch (e) {
      showError([String(e && e.message || e)]);
    } finally {
      running = false;
    }
  }

  function schedule() {
    if (timer !== null) clearInterval(timer);
    timer = setInterval(refresh, REFRESH_MS);
  }

  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const v = $("token").value.trim();
    if (!v) return;
    try { sessionStorage.setItem(TOKEN_KEY, v); } catch (e) { /* storage off: nothing kept */ }
    $("token").value = "";
    refresh();
  });

  refresh();
  schedule();
})();
