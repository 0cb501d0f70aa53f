// MilkGuard operators' page: alerts (filters, search, live), an alert's detail, the devices.
// Every text from the server goes into the page as text (textContent, DOM nodes), never as
// markup; the content security policy runs no inline script either way.
"use strict";

const MEANING = "I performed or verified this corrective action, and the product disposition is as stated.";
const alerts = new Map();  // id -> alert, kept current by the live events
let me = null;
let lastEventId = null;
let liveController = null;
let charts = [];

const $ = (id) => document.getElementById(id);
function token() { return sessionStorage.getItem("milkguard-token"); }
function params() { return new URLSearchParams(location.search); }

async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { "Authorization": "Bearer " + token(), "Content-Type": "application/json" },
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) { throw new Error(body.detail ? JSON.stringify(body.detail) : response.statusText); }
  return body;
}

function show(error) { $("error").textContent = error ? String(error.message || error) : ""; }

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function utc(ms) {
  if (ms === null || ms === undefined) return "-";
  return new Date(ms).toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

function ago(ms) {
  if (ms === null || ms === undefined) return "never";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 90) return `${s} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}

function link(url, text) {
  // only http(s) links: a server bug could never turn into a javascript: URL here
  const a = el("a", text);
  if (/^https?:\/\//i.test(url)) { a.href = url; a.target = "_blank"; a.rel = "noopener noreferrer"; }
  return a;
}

function go(query) {
  history.pushState(null, "", "?" + new URLSearchParams(query).toString());
  route();
}

// ------------------------------------------------------------------ login, routing

async function login() {
  sessionStorage.setItem("milkguard-token", $("token").value);
  try {
    me = await api("/api/whoami");
    $("who").textContent = `${me.name} (${me.role})`;
    for (const id of ["login-box"]) $(id).classList.add("hidden");
    for (const id of ["main", "nav", "live", "user-box"]) $(id).classList.remove("hidden");
    $("action-form").classList.toggle("hidden", me.role === "regulator");
    $("nav-devices").classList.toggle("hidden", !me.devices);
    const links = $("grafana-links");
    links.replaceChildren(...me.grafana.map((g) => link(g.url, "Grafana: " + g.title)));
    show(null);
    await loadAlerts();
    follow();
    await route();
  } catch (error) { sessionStorage.removeItem("milkguard-token"); show(error); }
}

async function route() {
  const view = params().get("view") || "alerts";
  for (const section of document.querySelectorAll(".view")) section.classList.add("hidden");
  $("nav-alerts").classList.toggle("current", view === "alerts" || view === "alert");
  $("nav-devices").classList.toggle("current", view === "devices" || view === "gateway");
  try {
    if (view === "alert") await openAlert(params().get("id"));
    else if (view === "devices") await showDevices();
    else if (view === "gateway") await showGateway(params().get("site"), params().get("gateway"));
    else showAlerts();
    show(null);
  } catch (error) { show(error); }
}

// ------------------------------------------------------------------ the alert list

async function loadAlerts() {
  alerts.clear();
  for (const alert of await api("/api/alerts")) alerts.set(alert.id, alert);
}

function filters() {
  const p = params();
  return { site: p.get("site") || "", severity: p.get("severity") || "",
           state: p.get("state") || "", q: p.get("q") || "" };
}

function matches(alert, f) {
  if (f.site && alert.site !== f.site) return false;
  if (f.severity && alert.severity !== f.severity) return false;
  if (f.state && alert.state !== f.state) return false;
  if (!f.q) return true;
  const d = alert.deviation || {};
  const text = [alert.id, alert.rule_id, d.kind, d.ccp, d.device, ...(d.channels || []),
                ...alert.deviations, alert.acknowledged_by].filter(Boolean).join(" ");
  return text.toLowerCase().includes(f.q.toLowerCase());
}

function showAlerts(changed) {
  $("view-alerts").classList.remove("hidden");
  const f = filters();
  const sites = new Set([...alerts.values()].map((a) => a.site));
  for (const site of me.sites) if (site !== "*") sites.add(site);
  if (f.site) sites.add(f.site);
  const select = $("filter-site");
  select.replaceChildren(el("option", "all"), ...[...sites].sort().map((s) => el("option", s)));
  select.options[0].value = "";
  select.value = f.site;
  $("filter-severity").value = f.severity;
  $("filter-state").value = f.state;
  if (document.activeElement !== $("search")) $("search").value = f.q;

  const order = (a) => [a.state === "resolved" ? 1 : 0, -a.raised_ms];
  const shown = [...alerts.values()].filter((a) => matches(a, f)).sort((a, b) => {
    const [x, y] = [order(a), order(b)];
    return x[0] - y[0] || x[1] - y[1];
  });
  $("alert-count").textContent = `${shown.length} of ${alerts.size} alerts`;
  const rows = $("alerts");
  rows.replaceChildren();
  for (const alert of shown) {
    const row = el("tr", null, alert.state === "resolved" ? "resolved" : "");
    row.dataset.alertId = alert.id;
    if (changed && changed === alert.id) row.classList.add("flash");
    for (const [text, cls] of [[alert.severity, alert.severity], [`${alert.site} / ${alert.asset}`],
                               [alert.rule_id], [alert.state], [utc(alert.raised_ms)]]) {
      row.appendChild(el("td", text, cls));
    }
    const actions = el("td");
    if (alert.state === "raised" && me.role !== "regulator") {
      const ack = el("button", "Acknowledge", "ack");
      ack.onclick = (event) => { event.stopPropagation(); acknowledge(alert.id); };
      actions.appendChild(ack);
    }
    row.appendChild(actions);
    row.onclick = () => go({ view: "alert", id: alert.id });
    rows.appendChild(row);
  }
}

function setFilter(name, value) {
  const p = params();
  p.set("view", "alerts");
  if (value) p.set(name, value); else p.delete(name);
  history.replaceState(null, "", "?" + p.toString());
  showAlerts();
}

async function acknowledge(id) {
  try {
    const alert = await api("/api/acknowledge", { method: "POST", body: JSON.stringify({ alert_id: id }) });
    alerts.set(alert.id, alert);
    await route();
  } catch (error) { show(error); }
}

// ------------------------------------------------------------------ one alert

function limitText(limit) {
  if (!limit) return "-";
  const parts = [];
  if (limit.min !== null && limit.min !== undefined) parts.push(`at least ${limit.min}`);
  if (limit.max !== null && limit.max !== undefined) parts.push(`at most ${limit.max}`);
  let text = `${parts.join(" and ")} ${limit.unit || ""}`.trim();
  if (limit.sustained_s) text += ` (sustained ${limit.sustained_s} s)`;
  return text;
}

function factRow(body, field, name, value, cls) {
  const row = el("tr");
  row.dataset.field = field;
  row.appendChild(el("th", name));
  row.appendChild(el("td", value === null || value === undefined || value === "" ? "-" : value, cls));
  body.appendChild(row);
}

async function openAlert(id) {
  $("view-alert").classList.remove("hidden");
  const detail = await api("/api/alerts/detail?id=" + encodeURIComponent(id));
  const alert = detail.alert, d = alert.deviation, unit = (d.limit || {}).unit || "";
  alerts.set(alert.id, alert);
  $("detail-title").textContent = `${alert.severity} · ${alert.site} / ${alert.asset} · ${alert.rule_id}: ${alert.state}`;
  $("detail-title").className = alert.severity;
  $("detail-grafana").replaceChildren(...detail.grafana.map((g) => link(g.url, "Grafana: " + g.title)));

  const facts = $("detail-facts");
  facts.replaceChildren();
  const now = detail.value_now;
  factRow(facts, "deviation", "Deviation", `${d.id} (${d.kind}), ${d.status}`);
  factRow(facts, "channels", "Channels", `${(d.channels || []).join(", ")} on ${d.device}`);
  factRow(facts, "value", "Value now", now ? `${now.value} ${now.unit} at ${utc(now.ts)} (gateway ${now.gateway})` : "no reading received");
  factRow(facts, "limit", "Limit", limitText(d.limit));
  factRow(facts, "source", "Legal source", (d.limit || {}).source);
  factRow(facts, "start", "Start", d.start);
  factRow(facts, "end", "End", d.end || "still open");
  factRow(facts, "detected", "Detected", d.detected);
  factRow(facts, "peak", "Peak", d.peak === null || d.peak === undefined ? "-" : `${d.peak} ${unit}`);
  factRow(facts, "beyond", "Time beyond", `${d.time_beyond_s} s, ${d.degree_minutes} degree-minutes`);
  factRow(facts, "late", "Detected late", d.detected_late ? "yes: found when late readings arrived" : "no", d.detected_late ? "bad" : "");
  factRow(facts, "clock", "Clock", `${d.time_base === "stream" ? "stream time" : "device time"}: ${detail.clock}` +
          (d.clock_synced === false ? " (gateway clock not synchronised)" : ""));
  if (detail.cause) factRow(facts, "cause", "Cause", detail.cause);
  factRow(facts, "action", "Action required", d.action);
  factRow(facts, "rule", "Rule", `${d.rule_id}, CCP ${d.ccp || "-"}, plan ${d.plan} ${d.plan_version} (${d.jurisdiction})`);
  factRow(facts, "raised", "Raised", `${utc(alert.raised_ms)}${alert.reopened ? `, reopened ${alert.reopened}×` : ""}`);
  factRow(facts, "acknowledged", "Acknowledged by", alert.acknowledged_by);

  const reports = $("reports");
  reports.replaceChildren();
  for (const report of detail.reports) {
    const item = el("li");
    item.dataset.deviation = report.deviation;
    item.appendChild(el("span", `${report.deviation}: issued ${report.issued_at}, due by ${report.due_by} ` +
                                `(${report.within_deadline ? "met" : "MISSED"}), key ${report.key_id} `));
    for (const [name, label] of [[report.json, "signed JSON"], [report.html, "HTML"]]) {
      const button = el("button", label, "report");
      button.onclick = () => download(name);
      item.appendChild(button);
    }
    reports.appendChild(item);
  }
  if (!detail.reports.length) reports.appendChild(el("li", "none (reports are issued for critical deviations)"));

  const deliveries = $("deliveries");
  deliveries.replaceChildren();
  let failures = 0;
  for (const delivery of detail.deliveries) {
    const failed = delivery.status === "dead" || Boolean(delivery.error);
    if (failed) failures += 1;
    const row = el("tr", null, failed ? "failed" : "");
    for (const text of [`${delivery.event} (level ${delivery.level})`, delivery.recipient,
                        `${delivery.channel}: ${delivery.target}`,
                        delivery.status + (delivery.attempts > 1 ? ` after ${delivery.attempts} attempts` : ""),
                        utc(delivery.queued_ms), utc(delivery.sent_ms), delivery.error || ""]) {
      row.appendChild(el("td", text));
    }
    deliveries.appendChild(row);
  }
  $("delivery-failures").textContent = failures ? `${failures} delivery failure(s)` : "";
  $("delivery-failures").className = failures ? "failed" : "";

  $("meaning").textContent = "Signing means: " + MEANING;
  const trail = $("trail");
  trail.replaceChildren();
  for (const entry of detail.trail) {
    trail.appendChild(el("li", `${entry.at} ${entry.kind} by ${entry.actor}` +
      (entry.body.disposition ? ` (${entry.body.disposition}: ${entry.body.action_taken})` : "") +
      (entry.body.audiences ? ` → ${entry.body.audiences.join(", ")}` : "")));
  }
}

async function download(name) {
  try {
    const response = await fetch("/api/reports/" + encodeURIComponent(name),
                                 { headers: { "Authorization": "Bearer " + token() } });
    if (!response.ok) throw new Error(`report ${name}: ${response.status}`);
    const url = URL.createObjectURL(await response.blob());
    const a = el("a");
    a.href = url;
    a.download = name;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (error) { show(error); }
}

$("action-form").onsubmit = async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  const id = params().get("id");
  const body = { alert_id: id, meaning: MEANING };
  for (const [key, value] of form.entries()) { if (value) body[key] = value; }
  try {
    await api("/api/corrective-actions", { method: "POST", body: JSON.stringify(body) });
    event.target.reset();
    await openAlert(id);
    show(null);
  } catch (error) { show(error); }
};

// ------------------------------------------------------------------ devices

function clockText(clock) {
  if (!clock) return "unknown";
  const synced = clock.synced === null ? "sync unknown" : clock.synced ? "synced" : "NOT synced";
  const offset = clock.offset_ms === null ? "" : `, offset ${clock.offset_ms} ms`;
  return `${synced}${offset} (${clock.source})`;
}

async function showDevices() {
  $("view-devices").classList.remove("hidden");
  const gateways = await api("/api/devices");
  const rows = $("gateways");
  rows.replaceChildren();
  for (const g of gateways) {
    const row = el("tr");
    row.dataset.gateway = `${g.site}/${g.gateway}`;
    row.appendChild(el("td", `${g.site} / ${g.gateway}`));
    const state = el("td");
    state.appendChild(el("span", g.state, "badge " + g.state));
    row.appendChild(state);
    row.appendChild(el("td", ago(g.last_seen_ms)));
    row.appendChild(el("td", g.backlog === null ? "-" : `${g.backlog}${g.outbox_nearly_full ? " (outbox nearly full)" : ""}`));
    row.appendChild(el("td", g.failing.length ? g.failing.join(", ") : "none", g.failing.length ? "bad" : ""));
    const alarm = el("td");
    alarm.appendChild(el("span", g.alarm ? "ALARM" : "no", g.alarm ? "badge alarm" : ""));
    row.appendChild(alarm);
    row.appendChild(el("td", clockText(g.clock), g.clock && g.clock.synced === false ? "bad" : ""));
    row.appendChild(el("td", g.channel_count));
    row.onclick = () => go({ view: "gateway", site: g.site, gateway: g.gateway });
    rows.appendChild(row);
  }
  $("no-gateways").classList.toggle("hidden", gateways.length > 0);
}

async function showGateway(site, gateway) {
  $("view-gateway").classList.remove("hidden");
  const g = await api(`/api/devices/detail?site=${encodeURIComponent(site)}&gateway=${encodeURIComponent(gateway)}`);
  $("gateway-title").textContent = `${g.site} / ${g.gateway}`;
  $("gateway-grafana").replaceChildren(...g.grafana.map((x) => link(x.url, "Grafana: " + x.title)));
  const facts = $("gateway-facts");
  facts.replaceChildren();
  factRow(facts, "state", "State", g.state, g.state === "online" ? "ok" : "bad");
  factRow(facts, "last-seen", "Last seen", `${utc(g.last_seen_ms)} (${ago(g.last_seen_ms)})`);
  factRow(facts, "status", "Status of", utc(g.status_ts));
  factRow(facts, "backlog", "Backlog", g.backlog === null ? "-" :
          `${g.backlog} batches, ${g.outbox_bytes} bytes in the outbox${g.outbox_nearly_full ? ", NEARLY FULL" : ""}`);
  factRow(facts, "dropped", "Dropped / refused readings", `${g.dropped_readings} / ${g.refused_readings}`);
  factRow(facts, "sources", "Sources", g.sources.map((s) => `${s.name}: ${s.ok ? "ok" : `FAILING (${s.failures}× ${s.error || ""})`}`).join("; ") || "-",
          g.failing.length ? "bad" : "");
  factRow(facts, "alarm", "Local alarm", g.alarm ? "ON" : "off", g.alarm ? "bad" : "");
  factRow(facts, "clock", "Clock", clockText(g.clock), g.clock && g.clock.synced === false ? "bad" : "");

  for (const chart of charts) chart.destroy();
  charts = [];
  const box = $("channels");
  box.replaceChildren();
  for (const c of g.channels) {
    const card = el("div", null, "channel");
    card.dataset.channel = `${c.asset}/${c.channel}`;
    card.appendChild(el("div", `${c.asset} / ${c.channel}`, "name"));
    card.appendChild(el("div", `${c.value} ${c.unit}`, "value"));
    card.appendChild(el("div", utc(c.ts), "when"));
    const plot = el("div", null, "chart");
    card.appendChild(plot);
    box.appendChild(card);
    if (window.uPlot && c.series.t.length) {
      charts.push(new uPlot({
        width: 320, height: 110, legend: { show: false }, cursor: { show: true },
        scales: { x: { time: true } },
        axes: [{ size: 28, font: "10px system-ui" }, { size: 54, font: "10px system-ui" }],
        series: [{}, { label: "min", stroke: "#9bbbe0" }, { label: "max", stroke: "#9bbbe0" },
                 { label: c.unit, stroke: "#1f5fa8", width: 1.5 }],
      }, [c.series.t, c.series.min, c.series.max, c.series.last], plot));
    }
  }
}

// ------------------------------------------------------------------ live updates

function setLive(on) {
  $("live").textContent = on ? "live" : "reconnecting";
  $("live").classList.toggle("on", on);
}

async function onEvent(type, data) {
  const view = params().get("view") || "alerts";
  if (type === "alert") {
    alerts.set(data.id, data);
    if (view === "alerts") showAlerts(data.id);
    else if (view === "alert" && params().get("id") === data.id) await openAlert(data.id);
  } else if (type === "resync") {
    await loadAlerts();
    if (view === "alerts") showAlerts();
  } else if (type === "devices") {
    if (view === "devices") await showDevices();
    else if (view === "gateway") await showGateway(params().get("site"), params().get("gateway"));
  }
}

async function follow() {
  // fetch, not EventSource: the token goes in the Authorization header as for every call
  // (EventSource cannot send one, and a token in a URL ends up in logs)
  let delay = 1000;
  while (token()) {
    const controller = new AbortController();
    liveController = controller;
    try {
      const headers = { "Authorization": "Bearer " + token() };
      if (lastEventId !== null) headers["Last-Event-ID"] = lastEventId;
      const response = await fetch("/api/events", { headers, signal: controller.signal, cache: "no-store" });
      if (response.status === 401) { show("the token is no longer valid: log in again"); setLive(false); return; }
      if (!response.ok) throw new Error(`live updates: ${response.status}`);
      setLive(true);
      delay = 1000;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let type = "message", data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("id: ")) lastEventId = line.slice(4);
            else if (line.startsWith("event: ")) type = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
          }
          if (data) {
            try { await onEvent(type, JSON.parse(data)); } catch (error) { show(error); }
          }
        }
      }
    } catch (error) {
      if (controller.signal.aborted) return;
    }
    setLive(false);
    await new Promise((resolve) => setTimeout(resolve, delay + Math.random() * delay));
    delay = Math.min(delay * 2, 15000);
  }
}

// ------------------------------------------------------------------ wiring

$("filter-site").onchange = (e) => setFilter("site", e.target.value);
$("filter-severity").onchange = (e) => setFilter("severity", e.target.value);
$("filter-state").onchange = (e) => setFilter("state", e.target.value);
$("search").oninput = (e) => setFilter("q", e.target.value.trim());
$("filters").onsubmit = (e) => e.preventDefault();
for (const id of ["nav-alerts", "nav-devices", "back", "back-devices"]) {
  $(id).onclick = (event) => { event.preventDefault(); go(Object.fromEntries(new URL($(id).href).searchParams)); };
}
window.onpopstate = () => route();
$("login").onclick = login;
$("token").onkeydown = (e) => { if (e.key === "Enter") login(); };
$("logout").onclick = () => { if (liveController) liveController.abort(); sessionStorage.clear(); location.reload(); };
if (token()) { $("token").value = token(); login(); }
