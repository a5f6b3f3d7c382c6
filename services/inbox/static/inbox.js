// The inbox page's script (served as /static/inbox.js: the page's CSP allows no inline script).
"use strict";
(() => {
  // A person signs in at /login (OpenID Connect); the session is an HttpOnly, SameSite=Strict
  // cookie this script never sees. Every POST carries this header, which the inbox requires of
  // a cookie-authenticated POST: a form or script of another site cannot send it.
  const CSRF = { "X-Carebus-Request": "inbox" };
  const PAGE_LIMIT = 1000;
  const MAX_PAGES = 20;
  const PERSON_URL = /^\/persons\/[0-9a-f]{64}$/;
  const STREAM_SILENCE_MS = 45000; // the server sends a keepalive every 15 s
  const OSLO = new Intl.DateTimeFormat("nb-NO", {
    timeZone: "Europe/Oslo", year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit",
  });
  const $ = (selector) => document.querySelector(selector);
  const tbody = $("#alerts tbody");

  const state = {
    signedIn: false,
    alerts: new Map(),   // alert_id -> alert JSON
    rows: new Map(),     // alert_id -> <tr>
    rules: new Set(),
    loadGeneration: 0,
    streamGeneration: 0,
    streamAbort: null,
  };

  class ApiFailure extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(method, path) {
    let response;
    try {
      response = await fetch(path, {
        method, credentials: "same-origin", cache: "no-store",
        headers: method === "GET" ? { "Accept": "application/json" }
          : { ...CSRF, "Accept": "application/json" },
      });
    } catch (err) {
      throw new ApiFailure(0, "the inbox cannot be reached");
    }
    let body = null;
    try { body = await response.json(); } catch (err) { body = null; }
    if (!response.ok) {
      const error = body && body.error;
      let message = error && error.message ? error.message : "request failed";
      if (error && Array.isArray(error.details) && error.details.length) {
        message += " (" + error.details.map((d) => d.field + ": " + d.problem).join("; ") + ")";
      }
      throw new ApiFailure(response.status, response.status + " " + message);
    }
    return body;
  }

  function showError(message) {
    const box = $("#error");
    box.textContent = message;
    box.hidden = false;
  }

  function clearError() {
    const box = $("#error");
    box.textContent = "";
    box.hidden = true;
  }

  function setLive(live) {
    const badge = $("#live");
    badge.textContent = live ? "live" : "offline";
    badge.classList.toggle("is-live", live);
  }

  // --- what is shown -----------------------------------------------------------------------

  function formatTime(iso) {
    return iso ? OSLO.format(new Date(iso)) : "—";
  }

  function duration(ms) {
    const minutes = Math.floor(ms / 60000);
    const days = Math.floor(minutes / 1440);
    const hours = Math.floor((minutes % 1440) / 60);
    const rest = minutes % 60;
    if (days > 0) return days + " d " + hours + " h";
    if (hours > 0) return hours + " h " + rest + " min";
    return rest + " min";
  }

  function overdue(alert, now) {
    const due = Date.parse(alert.deadline || alert.breached_at);
    const end = alert.status === "resolved" && alert.resolved_at
      ? Date.parse(alert.resolved_at) : now;
    const late = end - due;
    return late < 0 ? "due in " + duration(-late) : duration(late) + " overdue";
  }

  function organisation(org) {
    return org ? org.agency + " " + org.org_id : "—";
  }

  function matchesFilter(alert) {
    const status = $("#filter-status").value;
    if (status === "active" && alert.status === "resolved") return false;
    if (status !== "active" && status !== "all" && alert.status !== status) return false;
    const rule = $("#filter-rule").value;
    if (rule !== "" && alert.rule_id !== rule) return false;
    if ($("#filter-escalated").checked && !alert.escalated) return false;
    return true;
  }

  function order(a, b) {
    if (a.breached_at !== b.breached_at) return Date.parse(a.breached_at) - Date.parse(b.breached_at);
    return a.alert_id < b.alert_id ? -1 : (a.alert_id > b.alert_id ? 1 : 0);
  }

  function rememberRule(alert) {
    if (state.rules.has(alert.rule_id)) return;
    state.rules.add(alert.rule_id);
    const select = $("#filter-rule");
    const option = document.createElement("option");
    option.value = alert.rule_id;
    option.textContent = alert.title + " (" + alert.rule_id + ")";
    const after = Array.from(select.options).slice(1).find((o) => o.value > alert.rule_id);
    select.insertBefore(option, after || null);
  }

  function cell(row, field) {
    let td = row.querySelector('[data-field="' + field + '"]');
    if (!td) {
      td = document.createElement("td");
      td.dataset.field = field;
      row.appendChild(td);
    }
    return td;
  }

  function newRow(alertId) {
    const row = document.createElement("tr");
    row.dataset.alertId = alertId;
    for (const field of ["subject", "title", "rule", "summary", "contact", "responsible",
                         "deadline", "overdue", "status", "escalated"]) {
      cell(row, field);
    }
    const actions = document.createElement("td");
    actions.className = "actions";
    for (const [action, label] of [["ack", "Acknowledge"], ["resolve", "Resolve"]]) {
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.action = action;
      button.textContent = label;
      button.addEventListener("click", () => act(alertId, action, button));
      actions.appendChild(button);
    }
    row.appendChild(actions);
    return row;
  }

  // Whom at the caller's organisation the alert is for: the accountable person and the deputy
  // (only on an alert that names the person; the registry's contact persons, read now).
  function responsible(alert) {
    if (!("accountable" in alert)) return "";
    const named = [["accountable", alert.accountable], ["deputy", alert.deputy]]
      .filter(([, person]) => person)
      .map(([position, person]) => position + ": " + person.name
        + (person.hpr_number ? " (HPR " + person.hpr_number + ")" : "")
        + (person.phone ? ", " + person.phone : ""));
    return named.length ? named.join("; ")
      : "no named person registered - add one in the registry";
  }

  // Rows are updated in place, never rebuilt, so a row element stays the same element.
  function fillRow(row, alert, now) {
    // An operator action concerns the organisation, not a person.
    const who = alert.subject ? alert.subject.nin
      : alert.erased ? "erased" : alert.kind === "operator_action" ? "no person"
      : "not disclosed to you";
    const subject = cell(row, "subject");
    // Only an alert that names the person leads to the person view; the link is checked to be
    // exactly the inbox's own /persons/<subject key> before it is used.
    if (alert.subject && PERSON_URL.test(alert.person_url || "")) {
      const link = document.createElement("a");
      link.href = alert.person_url;
      link.className = "person-link";
      link.textContent = who;
      subject.replaceChildren(link);
    } else {
      subject.textContent = who;
    }
    cell(row, "title").textContent = alert.title;
    cell(row, "rule").textContent = alert.rule_id;
    cell(row, "rule").className = "rule";
    cell(row, "summary").textContent = alert.summary;
    cell(row, "contact").textContent = organisation(alert.contact);
    cell(row, "responsible").textContent = responsible(alert);
    cell(row, "deadline").textContent = formatTime(alert.deadline);
    cell(row, "overdue").textContent = overdue(alert, now);
    cell(row, "status").textContent = alert.status;
    cell(row, "escalated").textContent = alert.escalated ? "escalated" : "";
    row.className = "status-" + alert.status + (alert.escalated ? " escalated" : "");
    row.querySelector('button[data-action="ack"]').disabled = alert.status !== "open";
    row.querySelector('button[data-action="resolve"]').disabled = alert.status === "resolved";
  }

  function place(row, alert) {
    for (const other of tbody.children) {
      const shown = state.alerts.get(other.dataset.alertId);
      if (other !== row && shown && order(alert, shown) < 0) {
        tbody.insertBefore(row, other);
        return;
      }
    }
    tbody.appendChild(row);
  }

  function updateCount() {
    const shown = state.rows.size;
    $("#count").textContent = shown === 1 ? "1 alert" : shown + " alerts";
    $("#empty").hidden = shown > 0;
  }

  // A changed alert already on screen is updated even if it no longer matches the filter
  // (it leaves at the next reload); a new one is added only when it matches.
  function show(alert) {
    rememberRule(alert);
    let row = state.rows.get(alert.alert_id);
    if (!row) {
      if (!matchesFilter(alert)) return;
      row = newRow(alert.alert_id);
      state.rows.set(alert.alert_id, row);
      state.alerts.set(alert.alert_id, alert);
      place(row, alert);
    }
    state.alerts.set(alert.alert_id, alert);
    fillRow(row, alert, Date.now());
    updateCount();
  }

  function clearRows() {
    state.rows.forEach((row) => row.remove());
    state.rows.clear();
    state.alerts.clear();
    updateCount();
  }

  function refreshOverdue() {
    const now = Date.now();
    state.rows.forEach((row, alertId) => {
      cell(row, "overdue").textContent = overdue(state.alerts.get(alertId), now);
    });
  }

  // --- loading and acting --------------------------------------------------------------------

  function listQueries() {
    const status = $("#filter-status").value;
    const statuses = status === "active" ? ["open", "acknowledged"]
      : (status === "all" ? [null] : [status]);
    return statuses.map((one) => {
      const params = new URLSearchParams({ limit: String(PAGE_LIMIT) });
      if (one) params.set("status", one);
      if ($("#filter-rule").value) params.set("rule_id", $("#filter-rule").value);
      if ($("#filter-escalated").checked) params.set("escalated", "true");
      return params;
    });
  }

  async function fetchAll(params) {
    const items = [];
    let cursor = null;
    for (let page = 0; page < MAX_PAGES; page += 1) {
      if (cursor) params.set("cursor", cursor);
      const body = await api("GET", "/v1/alerts?" + params.toString());
      items.push(...body.items);
      cursor = body.next;
      if (!cursor) break;
    }
    return items;
  }

  // Reconciles the table with the server: rows of alerts no longer listed are removed,
  // the others updated in place.
  async function reload() {
    const generation = ++state.loadGeneration;
    const lists = await Promise.all(listQueries().map(fetchAll));
    if (generation !== state.loadGeneration || !state.signedIn) return false;
    const fresh = new Map();
    lists.flat().forEach((alert) => fresh.set(alert.alert_id, alert));
    state.rows.forEach((row, alertId) => {
      if (!fresh.has(alertId)) {
        row.remove();
        state.rows.delete(alertId);
        state.alerts.delete(alertId);
      }
    });
    Array.from(fresh.values()).sort(order).forEach(show);
    updateCount();
    return true;
  }

  async function reloadReportingErrors() {
    try {
      await reload();
    } catch (err) {
      handleFailure(err);
    }
  }

  async function act(alertId, action, button) {
    button.disabled = true;
    try {
      const alert = await api("POST", "/v1/alerts/" + encodeURIComponent(alertId) + "/" + action);
      clearError();
      show(alert);
    } catch (err) {
      handleFailure(err);
      const shown = state.alerts.get(alertId);
      if (shown) fillRow(state.rows.get(alertId), shown, Date.now());
    }
  }

  function handleFailure(err) {
    if (err instanceof ApiFailure && err.status === 401) {
      showSignedOut();
      showError("Your session has ended: sign in again.");
      return;
    }
    showError(err instanceof Error ? err.message : String(err));
  }

  // --- the live stream (fetch + ReadableStream, so a refusal's status can be read) ----------

  function handleEvent(block) {
    let event = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line === "" || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const name = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (name === "event") event = value;
      else if (name === "data") data.push(value);
    }
    if (event === "alert" && data.length) {
      show(JSON.parse(data.join("\n")));
    } else if (event === "resync") {
      reloadReportingErrors();
    }
  }

  async function readStream(generation) {
    const controller = new AbortController();
    state.streamAbort = controller;
    let silence = null;
    const watch = () => {
      clearTimeout(silence);
      silence = setTimeout(() => controller.abort(), STREAM_SILENCE_MS);
    };
    try {
      watch();
      const response = await fetch("/v1/alerts/stream", {
        credentials: "same-origin", cache: "no-store", signal: controller.signal,
        headers: { "Accept": "text/event-stream" },
      });
      if (!response.ok) {
        let message = "the live stream was refused";
        try { message = (await response.json()).error.message; } catch (err) { /* keep */ }
        throw new ApiFailure(response.status, response.status + " " + message);
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      let opened = false;
      for (;;) {
        const { value, done } = await reader.read();
        if (done || generation !== state.streamGeneration) break;
        watch();
        buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          handleEvent(block);
        }
        if (!opened) {
          opened = true;
          setLive(true);
          // Changes made while the stream was down were not heard: load the list again.
          reloadReportingErrors();
        }
      }
      return true;
    } finally {
      clearTimeout(silence);
      controller.abort();
      if (generation === state.streamGeneration) setLive(false);
    }
  }

  async function stream(generation) {
    let delay = 1000;
    while (state.signedIn && generation === state.streamGeneration) {
      try {
        await readStream(generation);
        delay = 1000;
      } catch (err) {
        if (err instanceof ApiFailure && (err.status === 401 || err.status === 403)) {
          if (generation === state.streamGeneration) handleFailure(err);
          return;
        }
      }
      if (!state.signedIn || generation !== state.streamGeneration) return;
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 30000);
    }
  }

  // --- signing in and out ----------------------------------------------------------------------

  // Whether this browser has a session: the first list load answers (401: no session).
  async function start() {
    state.signedIn = true;
    try {
      await reload();
    } catch (err) {
      showSignedOut();
      if (!(err instanceof ApiFailure && err.status === 401)) {
        showError("The inbox cannot be loaded: " + (err instanceof Error ? err.message : err));
      }
      return;
    }
    clearError();
    $("#signin-form").hidden = true;
    $("#signed-in").hidden = false;
    state.streamGeneration += 1;
    stream(state.streamGeneration);
  }

  function showSignedOut() {
    state.signedIn = false;
    state.streamGeneration += 1;
    state.loadGeneration += 1;
    if (state.streamAbort) state.streamAbort.abort();
    clearRows();
    state.rules.clear();
    const rules = $("#filter-rule");
    while (rules.options.length > 1) rules.remove(1);
    rules.value = "";
    $("#signed-in").hidden = true;
    $("#signin-form").hidden = false;
    setLive(false);
  }

  async function signOut() {
    showSignedOut();
    clearError();
    try {
      await api("POST", "/logout");
    } catch (err) {
      showError("Signing out failed: " + (err instanceof Error ? err.message : err));
    }
  }

  $("#signout").addEventListener("click", signOut);
  for (const id of ["#filter-status", "#filter-rule", "#filter-escalated"]) {
    $(id).addEventListener("change", reloadReportingErrors);
  }
  setInterval(refreshOverdue, 30000);
  start();
})();
