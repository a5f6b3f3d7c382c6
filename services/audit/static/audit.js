// The audit page's script (served as /static/audit.js: the page's CSP allows no inline script).
"use strict";
(() => {
  // The session is an HttpOnly, SameSite=Strict cookie this script never sees. Every POST
  // carries this header, which the audit service requires of a cookie-authenticated POST.
  const CSRF = { "X-Carebus-Request": "audit" };
  const OSLO = new Intl.DateTimeFormat("nb-NO", {
    timeZone: "Europe/Oslo", year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit",
  });
  const $ = (selector) => document.querySelector(selector);

  class ApiFailure extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(method, path, body) {
    const headers = { "Accept": "application/json" };
    if (method !== "GET") Object.assign(headers, CSRF, { "Content-Type": "application/json" });
    let response;
    try {
      response = await fetch(path, {
        method, headers, credentials: "same-origin", cache: "no-store",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      throw new ApiFailure(0, "the audit service cannot be reached");
    }
    let answer = null;
    try { answer = await response.json(); } catch (err) { answer = null; }
    if (!response.ok) {
      const error = answer && answer.error;
      let message = error && error.message ? error.message : "request failed";
      if (error && Array.isArray(error.details) && error.details.length) {
        message += " (" + error.details.map((d) => d.field + ": " + d.problem).join("; ") + ")";
      }
      throw new ApiFailure(response.status, response.status + " " + message);
    }
    return answer;
  }

  function showError(message) {
    const box = $("#error");
    box.textContent = message;
    box.hidden = !message;
  }

  function when(text) {
    const at = new Date(text);
    return Number.isNaN(at.getTime()) ? text : OSLO.format(at);
  }

  function fill(tbody, rows) {
    tbody.replaceChildren(...rows.map((cells) => {
      const tr = document.createElement("tr");
      for (const cell of cells) {
        const td = document.createElement("td");
        td.textContent = cell === null || cell === undefined ? "" : String(cell);
        tr.append(td);
      }
      return tr;
    }));
  }

  const org = (o) => (o ? o.agency + " " + o.org_id : "");

  function showAnswer(report) {
    fill($("#items tbody"), report.items.map((d) => [
      when(d.decided_at), d.event_type, org(d.recipient), d.decision,
      d.decision === "delivered" ? d.basis + ": " + (d.fields || []).join(", ") : d.reason,
    ]));
    fill($("#lookups tbody"), report.lookups.map((l) => [
      when(l.looked_at), l.agency + " " + l.org_id, l.role, l.purpose,
    ]));
    fill($("#refusals tbody"), report.refusals.map((r) => [
      when(r.decided_at), org(r.actor), r.statement, r.rule_id,
    ]));
    $("#answer").hidden = false;
  }

  async function query(event) {
    event.preventDefault();
    showError("");
    const nin = $("#nin").value.trim();
    const purpose = $("#purpose").value.trim();
    try {
      showAnswer(await api("POST", "/v1/disclosures/query",
        purpose ? { nin, purpose } : { nin }));
    } catch (err) {
      $("#answer").hidden = true;
      showError(err.message);
    }
  }

  async function signOut() {
    try { await api("POST", "/logout"); } catch (err) { /* the session is gone either way */ }
    window.location.assign("/");
  }

  async function start() {
    $("#query").addEventListener("submit", query);
    $("#signout").addEventListener("click", signOut);
    try {
      const log = await api("GET", "/v1/me/disclosures");
      fill($("#log tbody"), log.items.map((row) => [when(row.at), row.text]));
      $("#log-empty").hidden = log.items.length > 0;
      $("#patient").hidden = false;
      $("#signout").hidden = false;
    } catch (err) {
      if (err.status === 403) {  // signed in, but not as a patient: the privacy officer
        $("#officer").hidden = false;
        $("#signout").hidden = false;
      } else if (err.status === 401) {
        $("#signin").hidden = false;
      } else {
        showError(err.message);
      }
    }
  }

  start();
})();
