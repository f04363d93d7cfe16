// radflow console: a small hand-written page over the admin API (no framework, no build step,
// nothing fetched from elsewhere: hospital networks are often offline). Every text from the
// server goes into the page through textContent, never as HTML. Changes carry the session's
// CSRF token in the X-CSRF-Token header; the server refuses them without it.

const state = { csrf: "", role: "", user: "", timeZone: undefined, timer: null, rates: null };
const RANK = { viewer: 1, operator: 2, admin: 3 };
const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "onclick" || k === "onsubmit" || k === "onchange") node[k] = v;
    else if (k === "class") node.className = v;
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function say(text, ok = false) {
  const m = $("#message");
  m.textContent = text || "";
  m.className = text ? (ok ? "ok" : "error") : "";
}

function fmtTime(value) {
  if (value === null || value === undefined || value === "") return "";
  const d = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  if (isNaN(d)) return String(value);
  return new Intl.DateTimeFormat(undefined, {
    timeZone: state.timeZone, year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit" }).format(d);
}

async function api(method, path, body, contentType) {
  const headers = {};
  if (method !== "GET") headers["X-CSRF-Token"] = state.csrf;
  let payload;
  if (body instanceof Blob || body instanceof ArrayBuffer) {
    payload = body; headers["Content-Type"] = contentType || "application/octet-stream";
  } else if (typeof body === "string") {
    payload = body; headers["Content-Type"] = contentType || "text/plain";
  } else if (body !== undefined) {
    payload = JSON.stringify(body); headers["Content-Type"] = "application/json";
  }
  const resp = await fetch(path, { method, headers, body: payload, credentials: "same-origin" });
  let data = null;
  const type = resp.headers.get("Content-Type") || "";
  if (type.includes("json")) data = await resp.json(); else data = await resp.text();
  if (resp.status === 401 && path !== "/api/v1/session") { showLogin(); }
  if (!resp.ok) {
    const why = data && data.error ? data.error : `${resp.status} ${resp.statusText}`;
    const problems = data && data.problems ? " — " + JSON.stringify(data.problems) : "";
    const err = new Error(why + problems); err.status = resp.status; err.data = data;
    throw err;
  }
  return data;
}

function can(role) { return (RANK[state.role] || 0) >= RANK[role]; }

function table(rows, columns, onRow) {
  const t = el("table", {}, el("thead", {}, el("tr", {}, columns.map((c) => el("th", {}, c.label)))));
  const body = el("tbody");
  for (const row of rows) {
    const tr = el("tr", onRow ? { class: "clickable", onclick: () => onRow(row) } : {},
      columns.map((c) => {
        const v = c.value ? c.value(row) : row[c.key];
        return el("td", { "data-col": c.key || c.label }, v instanceof Node ? v : (v ?? ""));
      }));
    body.append(tr);
  }
  t.append(body);
  return t;
}

function page(title, ...children) {
  const p = $("#page");
  p.replaceChildren(el("h1", {}, title), ...children);
  return p;
}

function stopTimer() { if (state.timer) { clearInterval(state.timer); state.timer = null; } }

// --- login ------------------------------------------------------------------------------------
function showLogin() {
  stopTimer();
  $("#nav").hidden = true; $("#logout").hidden = true; $("#who").textContent = "";
  $("#page").replaceChildren();
  $("#login").hidden = false;
  $("#login-user").focus();
}

async function start() {
  $("#login").onsubmit = async (ev) => {
    ev.preventDefault();
    try {
      const who = await api("POST", "/api/v1/session",
        { user: $("#login-user").value, password: $("#login-password").value });
      $("#login-password").value = "";
      enter(who);
    } catch (e) { say(e.message); }
  };
  $("#logout").onclick = async () => {
    try { await api("DELETE", "/api/v1/session"); } catch (e) { /* gone already */ }
    state.csrf = ""; showLogin(); say("Logged out.", true);
  };
  window.addEventListener("hashchange", route);
  try {
    enter(await api("GET", "/api/v1/session"));
  } catch (e) { showLogin(); }
}

async function enter(who) {
  state.csrf = who.csrf || ""; state.role = who.role; state.user = who.user;
  try {
    const s = await api("GET", "/api/v1/console");
    state.timeZone = s.time_zone || undefined;
    $("#site").textContent = s.site;
    document.title = `${s.site} — radflow`;
  } catch (e) { /* keep defaults */ }
  $("#tz").textContent = state.timeZone || Intl.DateTimeFormat().resolvedOptions().timeZone;
  $("#login").hidden = true; $("#nav").hidden = false;
  $("#logout").hidden = who.via !== "session";
  $("#nav-admin").hidden = !can("admin");
  $("#who").textContent = `${who.user} (${who.role})`;
  say("");
  route();
}

const PAGES = {};
function route() {
  stopTimer();
  const name = (location.hash.replace(/^#\//, "").split("?")[0]) || "overview";
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.getAttribute("href") === `#/${name}`);
  }
  const show = PAGES[name] || PAGES.overview;
  say("");
  show().catch((e) => say(e.message));
}

function confirmed(text) { return window.confirm(text); }

async function act(text, fn) {
  try { const r = await fn(); say(text(r), true); return r; } catch (e) { say(e.message); return null; }
}

// --- Overview ---------------------------------------------------------------------------------
function parseMetrics(text) {
  const sums = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/);
    if (!m) continue;
    const labels = m[2] || "";
    const key = m[1];
    const v = Number(m[3]);
    if (key === "radflow_delivery_outcomes_total" && !labels.includes('outcome="delivered"')) continue;
    sums[key] = (sums[key] || 0) + v;
  }
  return sums;
}

const RATE_KEYS = {
  "stored / min": ["radflow_dimse_instances_received_total"],
  "orders / min": ["radflow_hl7_messages_total"],
  "queries / min": ["radflow_mwl_find_requests_total", "radflow_qr_requests_total"],
  "deliveries / min": ["radflow_delivery_outcomes_total"],
};

PAGES.overview = async function overview() {
  const cards = el("div", { class: "cards", id: "overview-cards" });
  const queues = el("div", { id: "overview-queues" });
  const errors = el("div", { id: "overview-errors" });
  page("Overview", cards, el("h2", {}, "Queues"), queues, el("h2", {}, "Recent errors"), errors);
  async function refresh() {
    const [ready, q, rules, metricsText, recent] = await Promise.all([
      fetch("/readyz").then((r) => r.json()),
      api("GET", "/api/v1/queues").catch(() => ({ queues: [] })),
      api("GET", "/api/v1/routes").catch(() => null),
      fetch("/metrics").then((r) => r.text()),
      api("GET", "/api/v1/errors?limit=20").catch(() => ({ items: [] })),
    ]);
    const now = Date.now() / 1000;
    const m = parseMetrics(metricsText);
    const prev = state.rates;
    state.rates = { at: now, m };
    const items = [];
    for (const [name, c] of Object.entries(ready.checks || {})) {
      items.push(el("div", { class: "card" }, name, el("b", { class: c.ok ? "good" : "bad" }, c.ok ? "ok" : "not ok"), c.detail));
    }
    for (const [label, keys] of Object.entries(RATE_KEYS)) {
      let text = "…";
      if (prev && now > prev.at) {
        const d = keys.reduce((s, k) => s + ((m[k] || 0) - (prev.m[k] || 0)), 0);
        text = (d * 60 / (now - prev.at)).toFixed(1);
      }
      items.push(el("div", { class: "card" }, label, el("b", {}, text)));
    }
    const dead = (q.queues || []).reduce((s, x) => s + x.dead, 0);
    items.push(el("div", { class: "card" }, "dead letters", el("b", { class: dead ? "bad" : "good" }, dead)));
    if (m.radflow_spool_free_bytes !== undefined) {
      items.push(el("div", { class: "card" }, "spool free", el("b", {}, (m.radflow_spool_free_bytes / 2 ** 30).toFixed(1) + " GiB")));
    }
    if (rules) {
      items.push(el("div", { class: "card" }, "rule set", el("b", {}, String(rules.version ?? rules.ruleset ?? "")),
        rules.last_reload ? JSON.stringify(rules.last_reload) : ""));
    }
    cards.replaceChildren(...items);
    queues.replaceChildren(queueTable(q.queues || []));
    errors.replaceChildren(recent.items.length ? table(recent.items, [
      { label: "last seen", key: "last_at", value: (r) => fmtTime(r.last_at) },
      { label: "what", key: "kind_label" }, { label: "concerning", key: "subject" },
      { label: "address", key: "peer_host" }, { label: "reason", key: "reason" },
      { label: "times", key: "count", value: (r) => r.count > 1 ? `${r.count} (since ${fmtTime(r.first_at)})` : "1" },
      { label: "node", key: "node" }]) : el("p", {}, "No errors recorded."));
  }
  await refresh();
  state.timer = setInterval(() => refresh().catch((e) => say(e.message)), 5000);
};

function queueTable(rows) {
  return table(rows, [
    { label: "destination", key: "destination" }, { label: "type", key: "type" },
    { label: "pending", key: "pending" }, { label: "leased", key: "leased" },
    { label: "dead", key: "dead" },
    { label: "oldest", value: (r) => r.oldest_age_seconds == null ? "" : `${Math.round(r.oldest_age_seconds)} s` },
    { label: "circuit", key: "circuit" }]);
}

// --- Worklist ---------------------------------------------------------------------------------
PAGES.worklist = async function worklist() {
  const form = el("form", { class: "inline", id: "wl-search" },
    el("label", {}, "Patient ID", el("input", { name: "patient_id" })),
    el("label", {}, "Accession", el("input", { name: "accession_number" })),
    el("label", {}, "Modality", el("input", { name: "modality", size: 4 })),
    el("label", {}, "Date (YYYYMMDD or range)", el("input", { name: "date" })),
    el("button", { type: "submit" }, "Search"));
  const results = el("div", { id: "wl-results" });
  const detail = el("div", { id: "wl-detail" });
  const children = [form, results, detail];
  if (can("operator")) {
    const text = el("textarea", { id: "wl-new", rows: 6, cols: 80,
      placeholder: "An HL7 v2 order (ORM^O01 / OMI^O23) or a JSON item" });
    children.push(el("h2", {}, "Add an item"), text, el("div", {},
      el("button", { type: "button", id: "wl-add", onclick: async () => {
        const v = text.value.trim();
        const isJson = v.startsWith("{");
        await act((r) => isJson ? `Item ${r.id} added.` : `HL7 ${r.ack_code}: ${r.text || ""}`,
          () => api("POST", "/api/v1/worklist", v, isJson ? "application/json" : "text/plain"));
        search();
      } }, "Add")));
  }
  page("Worklist", ...children);
  async function search() {
    const params = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (String(v).trim()) params.set(k, String(v).trim());
    const data = await api("GET", "/api/v1/worklist?" + params);
    results.replaceChildren(el("p", {}, `${data.total} item(s)`), table(data.items, [
      { label: "id", key: "id" }, { label: "status", key: "status" },
      { label: "patient", value: (r) => `${r.patient_name || ""} (${r.patient_id || ""})` },
      { label: "accession", key: "accession_number" }, { label: "modality", key: "modality" },
      { label: "scheduled", value: (r) => r.scheduled_start || r.sps_start_date || "" }],
    showItem));
  }
  async function showItem(item) {
    const full = await api("GET", `/api/v1/worklist/${item.id}`);
    const parts = [el("h2", {}, `Item ${full.id}: ${full.status}`), el("pre", {}, JSON.stringify(full, null, 2))];
    if (can("operator") && full.status !== "CANCELLED" && full.status !== "COMPLETED") {
      parts.push(el("button", { class: "danger", id: "wl-cancel", type: "button", onclick: async () => {
        if (!confirmed(`Cancel worklist item ${full.id} (accession ${full.accession_number})?`)) return;
        await act(() => `Item ${full.id} cancelled.`, () => api("DELETE", `/api/v1/worklist/${full.id}`));
        await search(); await showItem(full);
      } }, "Cancel item"));
    }
    if (full.accession_number) {
      const trace = await api("GET", "/api/v1/trace?accession=" + encodeURIComponent(full.accession_number));
      parts.push(el("h2", {}, "History"), timelineTable(trace.timeline));
    }
    detail.replaceChildren(...parts);
  }
  form.onsubmit = (ev) => { ev.preventDefault(); search().catch((e) => say(e.message)); };
  await search();
};

function timelineTable(rows) {
  return table(rows || [], [
    { label: "when", value: (r) => fmtTime(r.at) }, { label: "what", key: "kind" },
    { label: "", key: "summary" }]);
}

// --- Procedure steps --------------------------------------------------------------------------
PAGES.steps = async function steps() {
  const data = await api("GET", "/api/v1/procedure-steps?limit=200");
  const rows = data.items || data.steps || [];
  page("Procedure steps", el("p", {}, `${data.total ?? rows.length} step(s)`), table(rows, [
    { label: "status", key: "status" }, { label: "modality AE", key: "calling_ae" },
    { label: "study", key: "study_instance_uid" },
    { label: "worklist items", value: (r) => (r.worklist_item_ids || []).join(", ") || (r.unscheduled ? "unscheduled" : "") },
    { label: "instances expected / received", value: (r) => `${r.expected_instances ?? ""} / ${r.received_instances ?? ""}` },
    { label: "updated", value: (r) => fmtTime(r.updated_at || r.created_at) }]));
};

// --- Studies ----------------------------------------------------------------------------------
PAGES.studies = async function studies() {
  const form = el("form", { class: "inline", id: "study-search" },
    el("label", {}, "Search by", el("select", { name: "by" },
      el("option", { value: "patient" }, "Patient ID"), el("option", { value: "accession" }, "Accession"),
      el("option", { value: "study" }, "Study UID"))),
    el("label", {}, "Value", el("input", { name: "value", required: true })),
    el("button", { type: "submit" }, "Trace"));
  const traceOut = el("div", { id: "study-trace" });
  const recent = el("div", { id: "study-recent" });
  page("Studies", form, traceOut, el("h2", {}, "Recently received"), recent);
  async function instancesOf(studies) {
    // The received instances of the traced studies (the first 200 of each), each with a dry
    // run of its spooled file on the Routes page.
    const rows = [];
    for (const uid of studies.slice(0, 5)) {
      const d = await api("GET", `/api/v1/studies/${encodeURIComponent(uid)}/instances?limit=200`);
      rows.push(...d.items);
    }
    return table(rows, [
      { label: "received", value: (r) => fmtTime(r.received_at) },
      { label: "SOP Instance UID", key: "sop_instance_uid" }, { label: "modality", key: "modality" },
      { label: "version", value: (r) => r.superseded ? `${r.version} (replaced)` : String(r.version) },
      { label: "from", key: "calling_ae" },
      { label: "", value: (r) => el("button", { type: "button", class: "dryrun-pick", "data-uid": r.sop_instance_uid,
        onclick: () => { location.hash = "#/routes?instance=" + encodeURIComponent(r.sop_instance_uid); } }, "Dry run") }]);
  }
  async function trace(by, value) {
    const t = await api("GET", `/api/v1/trace?${by}=${encodeURIComponent(value)}`);
    const deliveries = (t.timeline || []).filter((e) => e.kind === "delivery");
    const studies = by === "study" ? [value] : ((t.keys || {}).study_instance_uids || []);
    traceOut.replaceChildren(
      el("h2", {}, `${by} ${value}: ${t.found ? "found" : "nothing found"}`),
      el("h2", {}, "Deliveries"),
      el("div", { id: "study-deliveries" }, table(deliveries, [
        { label: "since", value: (r) => fmtTime(r.at) }, { label: "route", value: (r) => r.details.route },
        { label: "destination", value: (r) => r.details.destination },
        { label: "rows", value: (r) => r.details.rows }, { label: "delivered", value: (r) => r.details.delivered },
        { label: "pending", value: (r) => r.details.pending }, { label: "dead", value: (r) => r.details.dead },
        { label: "attempts", value: (r) => r.details.attempts },
        { label: "last error", value: (r) => r.details.last_error || "" }])),
      el("h2", {}, "Timeline"), timelineTable(t.timeline),
      el("h2", {}, "Instances"), el("div", { id: "study-instances" }, await instancesOf(studies)));
  }
  form.onsubmit = (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    trace(f.get("by"), String(f.get("value")).trim()).catch((e) => say(e.message));
  };
  const data = await api("GET", "/api/v1/instances?limit=100");
  const studiesSeen = new Map();
  for (const i of data.items) if (i.study_instance_uid && !studiesSeen.has(i.study_instance_uid)) studiesSeen.set(i.study_instance_uid, i);
  recent.replaceChildren(table([...studiesSeen.values()], [
    { label: "received", value: (r) => fmtTime(r.received_at) },
    { label: "patient", key: "patient_id" }, { label: "accession", key: "accession_number" },
    { label: "modality", key: "modality" }, { label: "study UID", key: "study_instance_uid" },
    { label: "from", key: "calling_ae" }],
    (r) => trace("study", r.study_instance_uid).catch((e) => say(e.message))));
};

// --- Queues -----------------------------------------------------------------------------------
PAGES.queues = async function queues() {
  const overview = el("div", { id: "queues-table" });
  const dead = el("div", { id: "dead-letters" });
  page("Queues", overview, dead);
  async function refresh() {
    const q = await api("GET", "/api/v1/queues");
    overview.replaceChildren(table(q.queues, [
      { label: "destination", key: "destination" }, { label: "pending", key: "pending" },
      { label: "leased", key: "leased" }, { label: "dead", key: "dead" },
      { label: "circuit", key: "circuit" },
      { label: "", value: (r) => r.dead ? el("button", { type: "button", "data-dest": r.destination,
        onclick: () => showDead(r.destination) }, "Dead letters") : "" }]));
  }
  async function showDead(dest) {
    const d = await api("GET", `/api/v1/queues/${encodeURIComponent(dest)}/dead?limit=200`);
    const base = `/api/v1/queues/${encodeURIComponent(dest)}`;
    const parts = [el("h2", {}, `Dead letters of ${dest} (${d.total})`)];
    if (can("operator") && d.total) {
      parts.push(el("div", {},
        el("button", { type: "button", id: "retry-all", onclick: async () => {
          if (!confirmed(`Send all ${d.total} dead letters of ${dest} again?`)) return;
          await act((r) => `${r.retried} queued again.`, () => api("POST", base + "/retry", { all: true }));
          await refresh(); await showDead(dest);
        } }, "Retry all"), " ",
        el("button", { type: "button", class: "danger", id: "purge-all", onclick: async () => {
          if (!confirmed(`Delete all ${d.total} dead letters of ${dest}? They will not be sent.`)) return;
          await act((r) => `${r.purged} purged.`, () => api("DELETE", base + "/dead", { all: true }));
          await refresh(); await showDead(dest);
        } }, "Purge all")));
    }
    parts.push(table(d.items, [
      { label: "id", key: "id" }, { label: "kind", key: "kind" }, { label: "route", key: "route" },
      { label: "study", key: "study_instance_uid" }, { label: "attempts", key: "attempts" },
      { label: "dead since", value: (r) => fmtTime(r.dead_since) }, { label: "error", key: "last_error" },
      { label: "", value: (r) => can("operator") ? el("span", {},
        el("button", { type: "button", class: "retry-one", onclick: async () => {
          if (!confirmed(`Send dead letter ${r.id} again?`)) return;
          await act((x) => `${x.retried} queued again.`, () => api("POST", base + "/retry", { ids: [r.id] }));
          await refresh(); await showDead(dest);
        } }, "Retry"), " ",
        el("button", { type: "button", class: "danger purge-one", onclick: async () => {
          if (!confirmed(`Delete dead letter ${r.id}? It will not be sent.`)) return;
          await act((x) => `${x.purged} purged.`, () => api("DELETE", base + "/dead", { ids: [r.id] }));
          await refresh(); await showDead(dest);
        } }, "Purge")) : "" }]));
    dead.replaceChildren(...parts);
  }
  await refresh();
  state.timer = setInterval(() => refresh().catch((e) => say(e.message)), 5000);
};

// --- Routes -----------------------------------------------------------------------------------
PAGES.routes = async function routes() {
  const status = await api("GET", "/api/v1/routes");
  const file = el("input", { type: "file", id: "dryrun-file" });
  const wanted = new URLSearchParams(location.hash.split("?")[1] || "").get("instance") || "";
  const picked = el("input", { id: "dryrun-instance", size: 64, placeholder: "SOP Instance UID", value: wanted });
  const out = el("div", { id: "dryrun-result" });
  const reload = can("operator") ? el("button", { type: "button", id: "routes-reload", onclick: async () => {
    if (!confirmed("Reload the routes folder now?")) return;
    try { const r = await api("POST", "/api/v1/routes/reload"); say(`Reloaded: rule set ${r.ruleset}.`, true); }
    catch (e) { say(e.message); }
  } }, "Reload routes") : "";
  const routesList = status.routes || [];
  page("Routes", reload,
    table(routesList, [
      { label: "#", value: (r) => String(routesList.indexOf(r) + 1) },
      { label: "name", key: "name" }, { label: "trigger", value: (r) => typeof r.trigger === "object" ? JSON.stringify(r.trigger) : r.trigger },
      { label: "destinations", value: (r) => (r.destinations || []).join(", ") },
      { label: "source", value: (r) => r.source || "" }]),
    el("h2", {}, "Dry run"),
    el("p", {}, "Upload a DICOM file: which routes match and why, and what each morph changes. Nothing is stored or sent."),
    file, " ", el("button", { type: "button", id: "dryrun-run", onclick: async () => {
      const f = file.files[0];
      if (!f) { say("Choose a DICOM file first."); return; }
      try {
        const r = await api("POST", "/api/v1/routes/test?name=" + encodeURIComponent(f.name), f, "application/dicom");
        showDryRun(r);
      } catch (e) { if (e.data && e.data.routes) showDryRun(e.data); say(e.message); }
    } }, "Dry run"),
    el("p", {}, "Or a received instance, as it came (calling AE, called AE, address): pick one on the Studies page, or give its SOP Instance UID."),
    picked, " ", el("button", { type: "button", id: "dryrun-instance-run", onclick: () => runInstance(picked.value.trim()) }, "Dry run received instance"),
    out,
    el("h2", {}, "Status"), el("pre", {}, JSON.stringify({ ...status, routes: undefined }, null, 2)));
  async function runInstance(uid) {
    if (!uid) { say("Give a SOP Instance UID, or pick an instance on the Studies page."); return; }
    try {
      showDryRun(await api("GET", "/api/v1/routes/test/instance/" + encodeURIComponent(uid)));
    } catch (e) { if (e.data && e.data.routes) showDryRun(e.data); say(e.message); }
  }
  if (wanted) runInstance(wanted);
  function showDryRun(r) {
    const parts = [el("p", { id: "dryrun-outcome" }, `${r.file || ""}: ${r.outcome || ""} ${r.error || ""}`)];
    if (r.instance) {
      const i = r.instance;
      parts.push(el("p", { id: "dryrun-instance-info" }, `Received ${fmtTime(i.received_at)} from ${i.calling_ae} (${i.peer_host}) to ${i.called_ae}; study ${i.study_instance_uid || "?"}, version ${i.version}.`));
    }
    parts.push(table(r.routes || [], [
      { label: "route", key: "name" }, { label: "matched", value: (t) => t.matched ? "yes" : "no" },
      { label: "why", value: (t) => (t.why || []).map((w) => `${"  ".repeat(w.depth)}${w.matched ? "✓" : "✗"} ${w.reason}`).join("\n") }]));
    for (const m of r.morphs || []) {
      parts.push(el("h2", {}, `Morph of ${m.route} → ${(m.destinations || []).join(", ")}`));
      parts.push(table(m.changes || [], [
        { label: "attribute", key: "path" }, { label: "change", key: "kind" },
        { label: "before", value: (c) => el("span", { class: "diff-before" }, c.before ?? "") },
        { label: "after", value: (c) => el("span", { class: "diff-after" }, c.after ?? "") }]));
    }
    out.replaceChildren(...parts);
  }
};

// --- Destinations -----------------------------------------------------------------------------
PAGES.destinations = async function destinations() {
  const [d, q] = await Promise.all([api("GET", "/api/v1/destinations"), api("GET", "/api/v1/queues")]);
  const byName = Object.fromEntries((q.queues || []).map((x) => [x.destination, x]));
  const results = {};
  const body = el("div", { id: "destinations-table" });
  function render() {
    body.replaceChildren(table(d.destinations, [
      { label: "name", key: "name" }, { label: "type", key: "type" }, { label: "target", key: "target" },
      { label: "TLS", value: (r) => r.tls ? "yes" : "no" },
      { label: "circuit", value: (r) => (byName[r.name] || {}).circuit || "" },
      { label: "queue", value: (r) => { const x = byName[r.name]; return x ? `${x.pending} pending, ${x.dead} dead` : ""; } },
      { label: "last delivery", value: (r) => fmtTime((byName[r.name] || {}).last_delivered_at) || "none since start" },
      { label: "check", value: (r) => {
        const res = results[r.name];
        const btn = can("operator") ? el("button", { type: "button", onclick: async () => {
          try { results[r.name] = await api("POST", `/api/v1/destinations/${encodeURIComponent(r.name)}/check`); }
          catch (e) { results[r.name] = { ok: false, detail: e.message }; }
          render();
        } }, "Check") : "";
        return el("span", {}, btn, res ? el("span", { class: res.ok ? "good" : "bad" },
          ` ${res.ok ? "ok" : "failed"}${res.seconds != null ? ` in ${res.seconds.toFixed(3)} s` : ""} ${res.detail || ""}`) : "");
      } }]));
  }
  render();
  page("Destinations", body);
};

// --- Users, tokens and changes (admin) --------------------------------------------------------
PAGES.admin = async function admin() {
  if (!can("admin")) { page("Users & changes", el("p", {}, "Admins only.")); return; }
  const [users, tokens, changes] = await Promise.all([
    api("GET", "/api/v1/users"), api("GET", "/api/v1/tokens"), api("GET", "/api/v1/changes?limit=100")]);
  const add = el("form", { class: "inline", id: "user-add" },
    el("label", {}, "Name", el("input", { name: "name", required: true })),
    el("label", {}, "Role", el("select", { name: "role" }, ["viewer", "operator", "admin"].map((r) => el("option", { value: r }, r)))),
    el("label", {}, "Password (10+ characters)", el("input", { name: "password", type: "password", required: true, minlength: 10 })),
    el("button", { type: "submit" }, "Add user"));
  add.onsubmit = async (ev) => {
    ev.preventDefault();
    const f = Object.fromEntries(new FormData(add));
    if (await act(() => `User ${f.name} added.`, () => api("POST", "/api/v1/users", f))) route();
  };
  const tokenForm = el("form", { class: "inline", id: "token-add" },
    el("label", {}, "User", el("input", { name: "user", value: state.user })),
    el("label", {}, "Label", el("input", { name: "label", required: true })),
    el("button", { type: "submit" }, "Create token"));
  const shown = el("pre", { id: "token-shown", hidden: true });
  tokenForm.onsubmit = async (ev) => {
    ev.preventDefault();
    const f = Object.fromEntries(new FormData(tokenForm));
    const r = await act(() => "Token created: copy it now, it is not shown again.", () => api("POST", "/api/v1/tokens", f));
    if (r) { shown.hidden = false; shown.textContent = r.token; }
  };
  page("Users & changes",
    table(users.items, [
      { label: "name", key: "name" }, { label: "role", key: "role" },
      { label: "locked", value: (u) => u.locked ? "locked" : "" },
      { label: "", value: (u) => u.name === state.user ? "" : el("button", { type: "button", class: "danger", onclick: async () => {
        if (!confirmed(`Remove user ${u.name} and their tokens?`)) return;
        if (await act(() => `User ${u.name} removed.`, () => api("DELETE", `/api/v1/users/${encodeURIComponent(u.name)}`))) route();
      } }, "Remove") }]),
    add, el("h2", {}, "API tokens"), tokenForm, shown,
    table(tokens.items, [
      { label: "id", key: "id" }, { label: "user", key: "user" }, { label: "label", key: "label" },
      { label: "created", value: (t) => fmtTime(t.created_at) }, { label: "last used", value: (t) => fmtTime(t.last_used_at) },
      { label: "", value: (t) => t.revoked_at ? `revoked ${fmtTime(t.revoked_at)}` : el("button", { type: "button", onclick: async () => {
        if (!confirmed(`Revoke token ${t.id} (${t.label})?`)) return;
        if (await act(() => `Token ${t.id} revoked.`, () => api("DELETE", `/api/v1/tokens/${t.id}`))) route();
      } }, "Revoke") }]),
    el("h2", {}, `Changes (${changes.total})`),
    table(changes.items, [
      { label: "when", value: (c) => fmtTime(c.at) }, { label: "who", key: "user" },
      { label: "from", key: "peer_host" }, { label: "what", value: (c) => `${c.method} ${c.path}` },
      { label: "result", key: "status" }, { label: "detail", key: "detail" }]));
};

start();
