// skiprec demo page: plain JavaScript, no build step, no external resources.
//
// Talks to the same-origin HTTP API (relative URLs, so the page also works behind a path
// prefix): GET /recommendations/{user}, GET|DELETE /users/{user}/session, POST /events,
// GET /admin/experiments (the per-variant outcome table).
// body[data-state] is "idle" when no request is in flight, which the browser test waits on.
"use strict";

const K = 10;
const USER_KEY = "skiprec.demo.user";
const API_KEY_KEY = "skiprec.demo.apiKey";

const $ = (id) => document.getElementById(id);
let currentUser = null;
let previousRanks = new Map(); // track_id -> rank in the list shown before the last refresh
let shownRequestId = null; // the request_id of the list on screen: events name it
let pending = 0;

function setBusy(delta) {
  pending += delta;
  document.body.dataset.state = pending > 0 ? "loading" : "idle";
}

function say(text, isError = false) {
  const el = $("message");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

function randomId() {
  // crypto.randomUUID exists only in secure contexts (https or localhost).
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 12)}`;
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const apiKey = $("api-key").value.trim();
  if (apiKey) headers["X-API-Key"] = apiKey;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  setBusy(1);
  try {
    const response = await fetch(new URL(path, document.baseURI), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 401 || response.status === 403) {
      $("api-key-box").open = true;
    }
    if (!response.ok) {
      throw new Error(`${method} ${path}: ${response.status} ${await errorMessage(response)}`);
    }
    const data = response.status === 204 ? null : await response.json();
    return { data, headers: response.headers };
  } finally {
    setBusy(-1);
  }
}

// The service's errors are {"error": {"code", "message", "field"}}; the message says
// what to fix. Anything else (a proxy's HTML page, say) falls back to the status text.
async function errorMessage(response) {
  try {
    const payload = await response.json();
    const message = payload && payload.error && payload.error.message;
    if (typeof message === "string") return message;
  } catch (_) {
    // Not JSON.
  }
  return response.statusText;
}

function userPath(userId) {
  return encodeURIComponent(userId);
}

// ---- rendering ----------------------------------------------------------------------------

function renderRecommendations(payload, fallbackReason) {
  const list = $("rec-list");
  list.replaceChildren();
  const maxScore = Math.max(...payload.items.map((item) => item.score), 1e-9);
  const minScore = Math.min(...payload.items.map((item) => item.score), 0);
  payload.items.forEach((item, rank) => {
    const li = document.createElement("li");
    li.className = "rec-item";
    li.dataset.testid = "rec-item";
    li.dataset.trackId = item.track_id;

    const position = document.createElement("span");
    position.className = "rank";
    position.textContent = String(rank + 1);

    const name = document.createElement("span");
    name.className = "track";
    name.textContent = item.track_id;

    const movement = document.createElement("span");
    movement.className = "movement";
    const before = previousRanks.get(item.track_id);
    if (previousRanks.size > 0 && before === undefined) {
      movement.textContent = "new";
      movement.classList.add("new");
    } else if (before !== undefined && before !== rank) {
      movement.textContent = before > rank ? `▲${before - rank}` : `▼${rank - before}`;
      movement.classList.add(before > rank ? "up" : "down");
    }

    const score = document.createElement("span");
    score.className = "score";
    score.dataset.testid = "rec-score";
    score.textContent = item.score.toFixed(3);
    const bar = document.createElement("span");
    bar.className = "bar";
    const span = maxScore - minScore || 1;
    bar.style.width = `${Math.max(4, (100 * (item.score - minScore)) / span)}%`;
    bar.setAttribute("aria-hidden", "true");

    const play = document.createElement("button");
    play.type = "button";
    play.className = "play";
    play.textContent = "▶ Play";
    play.dataset.testid = "play-button";
    play.setAttribute("aria-label", `Play ${item.track_id}`);
    play.addEventListener("click", () => sendEvent(item.track_id, "play"));

    const skip = document.createElement("button");
    skip.type = "button";
    skip.className = "skip";
    skip.textContent = "✗ Skip";
    skip.dataset.testid = "skip-button";
    skip.setAttribute("aria-label", `Skip ${item.track_id}`);
    skip.addEventListener("click", () => sendEvent(item.track_id, "skip"));

    const scoreBox = document.createElement("span");
    scoreBox.className = "score-box";
    scoreBox.append(bar, score);
    li.append(position, name, movement, scoreBox, play, skip);
    list.append(li);
  });
  if (payload.items.length === 0) {
    const li = document.createElement("li");
    li.className = "empty";
    li.textContent = "No recommendations (empty catalogue?)";
    list.append(li);
  }
  previousRanks = new Map(payload.items.map((item, rank) => [item.track_id, rank]));
  list.dataset.generation = String(Number(list.dataset.generation) + 1);

  $("model-version").textContent = payload.model_version;
  $("variant").textContent = payload.variant || "–";
  shownRequestId = payload.request_id || null;
  const flag = $("fallback-flag");
  flag.textContent = payload.fallback ? `yes (${fallbackReason || "fallback"})` : "no (model)";
  flag.dataset.fallback = String(payload.fallback);
  flag.classList.toggle("warn", payload.fallback);
}

function renderSession(payload) {
  const list = $("session-list");
  list.replaceChildren();
  for (const event of payload.events) {
    const li = document.createElement("li");
    li.className = `session-event ${event.type}`;
    li.dataset.testid = "session-event";
    li.dataset.trackId = event.track_id;
    li.dataset.type = event.type;
    const mark = document.createElement("span");
    mark.className = "mark";
    mark.textContent = event.type === "skip" ? "✗" : "✓";
    mark.setAttribute("aria-label", event.type === "skip" ? "skipped" : "played");
    const name = document.createElement("span");
    name.textContent = event.track_id;
    li.append(mark, name);
    if (!event.known) {
      const unknown = document.createElement("span");
      unknown.className = "unknown";
      unknown.textContent = "not in model vocabulary";
      li.append(unknown);
    }
    list.append(li);
  }
  if (payload.events.length === 0) {
    const li = document.createElement("li");
    li.className = "empty";
    li.textContent = "No events yet: play or skip something.";
    list.append(li);
  }
  $("skip-rate").textContent = payload.events.length
    ? `${(100 * payload.skip_rate).toFixed(0)}% of ${payload.events.length}`
    : "–";
  renderSkipChart(payload.events);
}

function svg(tag, attributes) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attributes)) el.setAttribute(key, String(value));
  return el;
}

function renderSkipChart(events) {
  const chart = $("skip-chart");
  const title = chart.querySelector("title");
  chart.replaceChildren(title);
  const width = 320;
  const height = 120;
  const pad = { left: 34, right: 8, top: 8, bottom: 18 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const y = (rate) => pad.top + plotH * (1 - rate);
  for (const rate of [0, 0.5, 1]) {
    chart.append(
      svg("line", { x1: pad.left, x2: width - pad.right, y1: y(rate), y2: y(rate), class: "grid" }),
    );
    const label = svg("text", { x: pad.left - 4, y: y(rate) + 4, class: "axis", "text-anchor": "end" });
    label.textContent = `${rate * 100}%`;
    chart.append(label);
  }
  if (events.length === 0) return;
  const x = (i) => pad.left + (events.length === 1 ? plotW / 2 : (plotW * i) / (events.length - 1));
  let skips = 0;
  const points = events.map((event, i) => {
    if (event.type === "skip") skips += 1;
    return { x: x(i), y: y(skips / (i + 1)), skip: event.type === "skip" };
  });
  chart.append(
    svg("polyline", { points: points.map((p) => `${p.x},${p.y}`).join(" "), class: "rate-line" }),
  );
  for (const point of points) {
    chart.append(svg("circle", { cx: point.x, cy: point.y, r: 3.5, class: point.skip ? "dot skip" : "dot play" }));
  }
  const last = svg("text", { x: width - pad.right, y: height - 4, class: "axis", "text-anchor": "end" });
  last.textContent = `event ${events.length}`;
  chart.append(last);
}

function formatRate(rate) {
  if (!rate || rate.value === null) return "–";
  const pct = (x) => `${(100 * x).toFixed(1)}%`;
  return `${pct(rate.value)} [${pct(rate.low)}, ${pct(rate.high)}]`;
}

function renderExperiments(payload) {
  const body = $("experiments-body");
  body.replaceChildren();
  for (const arm of payload.arms) {
    const tr = document.createElement("tr");
    tr.dataset.testid = "experiment-arm";
    tr.dataset.variant = arm.variant;
    const cells = [
      arm.variant,
      arm.model_version,
      arm.served,
      arm.fallbacks,
      arm.answered,
      formatRate(arm.rates.hit),
      formatRate(arm.rates.hit_played),
      formatRate(arm.rates.hit_skipped),
    ];
    for (const value of cells) {
      const td = document.createElement("td");
      td.textContent = String(value);
      tr.append(td);
    }
    body.append(tr);
  }
  if (payload.arms.length === 0) {
    const tr = document.createElement("tr");
    const td = document.createElement("td");
    td.colSpan = 8;
    td.className = "empty";
    td.textContent = "Nothing served yet.";
    tr.append(td);
    body.append(tr);
  }
}

async function refreshExperiments() {
  try {
    const { data } = await api("GET", `admin/experiments?k=${K}`);
    renderExperiments(data);
  } catch (_) {
    // The table is a side panel: an error here (no API key yet) is shown by the rest.
  }
}

// ---- actions ------------------------------------------------------------------------------

async function refresh() {
  if (!currentUser) return;
  const user = userPath(currentUser);
  setBusy(1); // busy until the experiments table is drawn too (the browser test waits)
  try {
    const [recs, session] = await Promise.all([
      api("GET", `recommendations/${user}?k=${K}`),
      api("GET", `users/${user}/session`),
    ]);
    renderRecommendations(recs.data, recs.headers.get("X-Skiprec-Fallback"));
    renderSession(session.data);
    $("api-status").textContent = "ok";
    await refreshExperiments();
  } catch (error) {
    $("api-status").textContent = "error";
    say(error.message, true);
  } finally {
    setBusy(-1);
  }
}

async function sendEvent(trackId, type) {
  try {
    const { data } = await api("POST", "events", {
      event_id: randomId(),
      user_id: currentUser,
      track_id: trackId,
      type,
      timestamp: Date.now() / 1000,
      // The list this play or skip came from (GET /recommendations' request_id).
      ...(shownRequestId ? { request_id: shownRequestId } : {}),
    });
    say(`${type === "skip" ? "Skipped" : "Played"} ${trackId} (accepted ${data.accepted}).`);
  } catch (error) {
    say(error.message, true);
    return;
  }
  await refresh();
}

async function selectUser(userId) {
  currentUser = userId;
  previousRanks = new Map();
  $("user-id").value = userId;
  $("reset-session").disabled = false;
  localStorage.setItem(USER_KEY, userId);
  history.replaceState(null, "", `?user=${encodeURIComponent(userId)}`);
  say(`Listener ${userId}.`);
  await refresh();
}

async function resetSession() {
  if (!currentUser) return;
  try {
    await api("DELETE", `users/${userPath(currentUser)}/session`);
    previousRanks = new Map();
    say(`Session of ${currentUser} cleared.`);
  } catch (error) {
    say(error.message, true);
    return;
  }
  await refresh();
}

function init() {
  $("user-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if ($("user-id").reportValidity()) selectUser($("user-id").value.trim());
  });
  $("new-user").addEventListener("click", () => selectUser(`listener-${randomId().slice(0, 8)}`));
  $("reset-session").addEventListener("click", resetSession);
  const apiKey = $("api-key");
  apiKey.value = sessionStorage.getItem(API_KEY_KEY) || "";
  apiKey.addEventListener("change", () => {
    sessionStorage.setItem(API_KEY_KEY, apiKey.value.trim());
    refresh();
  });
  renderSkipChart([]);
  const fromUrl = new URLSearchParams(location.search).get("user");
  const initial = fromUrl || localStorage.getItem(USER_KEY);
  document.body.dataset.state = "idle";
  if (initial) selectUser(initial);
}

document.addEventListener("DOMContentLoaded", init);
