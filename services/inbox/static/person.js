// The person view's script (served as /static/person.js: the page's CSP allows no inline
// script). Everything shown is set with textContent: no data ever becomes markup.
"use strict";
(() => {
  const SUBJECT_KEY = /^\/persons\/([0-9a-f]{64})$/;
  const PAGE_LIMIT = 50;
  const OSLO = new Intl.DateTimeFormat("nb-NO", {
    timeZone: "Europe/Oslo", year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit",
  });
  const $ = (selector) => document.querySelector(selector);
  const state = { subjectKey: null, next: null };

  class ApiFailure extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(path) {
    let response;
    try {
      response = await fetch(path, {
        method: "GET", credentials: "same-origin", cache: "no-store",
        headers: { "Accept": "application/json" },
      });
    } catch (err) {
      throw new ApiFailure(0, "the inbox cannot be reached");
    }
    let body = null;
    try { body = await response.json(); } catch (err) { body = null; }
    if (!response.ok) {
      const error = body && body.error;
      throw new ApiFailure(response.status,
        response.status + " " + (error && error.message ? error.message : "request failed"));
    }
    return body;
  }

  function showError(message) {
    const box = $("#error");
    box.textContent = message;
    box.hidden = false;
  }

  function formatTime(iso) {
    return iso ? OSLO.format(new Date(iso)) : "—";
  }

  function text(value) {
    if (value === null || value === undefined) return "—";
    return typeof value === "object" ? JSON.stringify(value) : String(value);
  }

  function row(tbody, values, field) {
    const tr = document.createElement("tr");
    values.forEach((value, index) => {
      const td = document.createElement("td");
      td.dataset.field = field[index];
      td.textContent = value;
      tr.appendChild(td);
    });
    tbody.appendChild(tr);
    return tr;
  }

  // The named staff of a care-team organisation: position, name, role and HPR number.
  function contacts(named) {
    if (!named || !named.length) return "no named person registered";
    return named.map((person) => person.position + ": " + person.name
      + " (" + person.role.replaceAll("_", " ")
      + (person.hpr_number ? ", HPR " + person.hpr_number : "") + ")"
      + (person.phone ? ", " + person.phone : "")).join("; ");
  }

  function fields(payload) {
    return Object.keys(payload || {}).sort()
      .map((name) => name + ": " + text(payload[name])).join("; ");
  }

  // A definition list of label -> value pairs, skipping absent values (text nodes only).
  function definitions(dl, pairs) {
    dl.replaceChildren();
    pairs.filter((pair) => pair[1] !== undefined && pair[1] !== null).forEach((pair) => {
      const dt = document.createElement("dt");
      dt.textContent = pair[0];
      const dd = document.createElement("dd");
      dd.textContent = text(pair[1]);
      dd.dataset.field = pair[2] || pair[0];
      dl.append(dt, dd);
    });
    dl.hidden = dl.children.length === 0;
  }

  function showPlan(plan) {
    const crisis = (plan && plan.crisis_plan) || {};
    const owner = crisis.owner ? crisis.owner.agency + " " + crisis.owner.org_id : null;
    const coordinator = plan && plan.coordinator
      ? plan.coordinator.agency + " " + plan.coordinator.org_id : null;
    definitions($("#plan"), plan ? [
      ["Plan", plan.plan_id, "plan_id"],
      ["Status", plan.status, "status"],
      ["Coordinator", coordinator, "coordinator"],
      ["Next review (Oslo)", plan.next_review_at ? formatTime(plan.next_review_at) : null,
        "next_review_at"],
      ["Crisis plan", crisis.exists === undefined ? null : (crisis.exists ? "yes" : "no"),
        "crisis_plan"],
      ["Crisis plan id", crisis.id, "crisis_plan_id"],
      ["Crisis plan owner", owner, "crisis_plan_owner"],
      ["Crisis plan last reviewed (Oslo)", crisis.reviewed_at ? formatTime(crisis.reviewed_at)
        : null, "crisis_plan_reviewed_at"],
    ] : []);
    $("#plan-empty").hidden = Boolean(plan);
  }

  function showBrukerplan(assessment) {
    const scores = (assessment && assessment.scores) || {};
    definitions($("#brukerplan"), assessment ? [
      ["Assessed (Oslo)", formatTime(assessment.assessed_at), "assessed_at"],
    ].concat(Object.keys(scores).sort().map((domain) =>
      [domain.replaceAll("_", " "), scores[domain], domain])) : []);
    $("#brukerplan-empty").hidden = Boolean(assessment);
  }

  function showPerson(view) {
    $("#nin").textContent = view.subject && view.subject.nin ? view.subject.nin
      : (view.subject && view.subject.erased ? "erased" : "not known to your organisation");
    $("#relations").textContent = view.relations.join(", ").replaceAll("_", " ");

    const team = $("#care-team tbody");
    team.replaceChildren();
    view.care_team.forEach((member) => row(
      team, [member.agency, member.org_id, member.role, contacts(member.contacts)],
      ["agency", "org_id", "role", "contacts"]));
    $("#care-team-empty").hidden = view.care_team.length > 0;

    const owed = $("#obligations tbody");
    owed.replaceChildren();
    view.obligations.forEach((obligation) => row(owed,
      [obligation.title, obligation.rule_id, formatTime(obligation.deadline), obligation.status],
      ["title", "rule_id", "deadline", "status"]));
    $("#obligations-empty").hidden = view.obligations.length > 0;
    showPlan(view.plan);
    showBrukerplan(view.brukerplan);
  }

  function showEvents(events, append) {
    const tbody = $("#events tbody");
    if (!append) tbody.replaceChildren();
    events.items.forEach((item) => row(tbody,
      [formatTime(item.occurred_at), item.direction, item.event_type, item.event_id,
       item.basis || "—", fields(item.payload)],
      ["occurred_at", "direction", "event_type", "event_id", "basis", "payload"]));
    $("#events-empty").hidden = tbody.children.length > 0;
    state.next = events.next;
    $("#more").hidden = !events.next;
  }

  function timelinePath(before) {
    const params = new URLSearchParams({ limit: String(PAGE_LIMIT) });
    if (before) params.set("before", before);
    return "/v1/persons/" + state.subjectKey + "/timeline?" + params.toString();
  }

  function handleFailure(err) {
    if (err instanceof ApiFailure && err.status === 401) {
      $("#person").hidden = true;
      $("#signin-form").hidden = false;
      return;
    }
    showError(err.message);
  }

  async function start() {
    const found = SUBJECT_KEY.exec(window.location.pathname);
    if (!found) {
      showError("404 no such person");
      return;
    }
    state.subjectKey = found[1];
    try {
      const view = await api(timelinePath(null));
      showPerson(view);
      showEvents(view.events, false);
      $("#person").hidden = false;
    } catch (err) {
      handleFailure(err);
    }
  }

  $("#more").addEventListener("click", async () => {
    const button = $("#more");
    button.disabled = true;
    try {
      showEvents((await api(timelinePath(state.next))).events, true);
    } catch (err) {
      handleFailure(err);
    } finally {
      button.disabled = false;
    }
  });

  start();
})();
