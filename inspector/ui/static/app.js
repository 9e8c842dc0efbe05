// The operator's page. Alerts arrive by server-sent events (no polling); every string that came from Kafka is
// set as textContent, never as HTML. Feedback, and applying a threshold proposal, are POSTed with the access
// token, if the server asks for one.
"use strict";

const MAX_CARDS = 200;
const cards = new Map(); // frame id -> card element
const cameras = new Set();

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = String(text);
  return e;
}

function operatorName() {
  const input = document.getElementById("operator");
  const name = input ? input.value.trim() : "";
  if (name) sessionStorage.setItem("operator", name);
  return name || sessionStorage.getItem("operator") || "";
}

function feedbackToken() {
  if (document.body.dataset.tokenRequired !== "1") return null;
  let token = sessionStorage.getItem("feedbackToken");
  if (!token) {
    token = window.prompt("Access token for feedback") || "";
    if (token) sessionStorage.setItem("feedbackToken", token);
  }
  return token;
}

async function sendFeedback(frameId, verdict, container) {
  const result = container.querySelector(".feedback-result");
  const buttons = container.querySelectorAll("button");
  buttons.forEach((b) => { b.disabled = true; });
  const headers = { "Content-Type": "application/json" };
  const token = feedbackToken();
  if (token) headers["X-Feedback-Token"] = token;
  try {
    const r = await fetch("/feedback", {
      method: "POST", headers,
      body: JSON.stringify({ frame_id: frameId, verdict, operator: operatorName() }),
    });
    if (r.status === 403) sessionStorage.removeItem("feedbackToken");
    if (!r.ok) throw new Error(await r.text());
    result.textContent = verdict === "false_alarm" ? "marked: false alarm" : "marked: confirmed defect";
    container.dataset.verdict = verdict;
  } catch (err) {
    result.textContent = "not recorded: " + String(err.message || err).slice(0, 200);
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
  }
}

function feedbackButtons(frameId) {
  const box = el("div", "feedback");
  const no = el("button", "false-alarm", "false alarm");
  const yes = el("button", "confirmed", "confirmed defect");
  no.dataset.frameId = frameId;
  yes.dataset.frameId = frameId;
  box.append(no, yes, el("span", "feedback-result"));
  return box;
}

document.addEventListener("click", (ev) => {
  const b = ev.target.closest("button.false-alarm, button.confirmed");
  if (!b) return;
  const verdict = b.classList.contains("false-alarm") ? "false_alarm" : "confirmed_defect";
  sendFeedback(b.dataset.frameId, verdict, b.closest(".feedback"));
});

async function applyProposal(button) {
  const box = button.closest(".apply");
  const result = box.querySelector(".apply-result");
  button.disabled = true;
  const headers = { "Content-Type": "application/json" };
  const token = feedbackToken();
  if (token) headers["X-Feedback-Token"] = token;
  try {
    const r = await fetch("/calibration/apply", {
      method: "POST", headers, body: JSON.stringify({ proposal_id: button.dataset.proposalId }),
    });
    if (r.status === 403) sessionStorage.removeItem("feedbackToken");
    if (!r.ok) throw new Error(await r.text());
    const done = await r.json();
    result.textContent = "applied: model version " + done.model_version + " (" + done.cameras.join(", ") + ")";
    box.dataset.applied = done.model_version;
  } catch (err) {
    result.textContent = "not applied: " + String(err.message || err).slice(0, 300);
    button.disabled = false;
  }
}

document.addEventListener("click", (ev) => {
  const b = ev.target.closest("button.apply-proposal");
  if (b && !b.disabled) applyProposal(b);
});

// The content security policy allows no form submission (form-action 'none'): the window is a new page load.
const calibrationWindow = document.getElementById("calibration-window");
if (calibrationWindow) {
  calibrationWindow.addEventListener("submit", (ev) => {
    ev.preventDefault();
    window.location.search = new URLSearchParams(new FormData(calibrationWindow)).toString();
  });
}

function applyFilter() {
  const select = document.getElementById("camera-filter");
  const want = select ? select.value : "";
  cards.forEach((card) => { card.hidden = want !== "" && card.dataset.camera !== want; });
}

function noteCamera(camera) {
  const select = document.getElementById("camera-filter");
  if (!select || cameras.has(camera)) return;
  cameras.add(camera);
  const option = el("option", null, camera);
  option.value = camera;
  select.append(option);
}

function fill(card, a) {
  card.dataset.camera = a.camera_id;
  card.dataset.frameId = a.frame_id;
  card.classList.toggle("has-evidence", a.evidence);
  const img = card.querySelector("img");
  if (a.evidence && !img.getAttribute("src")) img.src = "/evidence/" + encodeURIComponent(a.frame_id) + ".jpg";
  card.querySelector(".camera").textContent = a.camera_id;
  card.querySelector(".score").textContent =
    "score " + a.score.toFixed(5) + " / threshold " + a.threshold.toFixed(5);
  card.querySelector(".latency").textContent = "capture to alert " + a.latency_ms.toFixed(0) + " ms";
  card.querySelector(".model").textContent = "model " + a.model;
  card.querySelector(".time").textContent = new Date(a.captured_ms).toLocaleTimeString();
  if (a.verdict) card.querySelector(".feedback-result").textContent = "marked: " + a.verdict.replace("_", " ");
  // What the sorter did with it: green when its fruit was pushed off, red when it went on down the line.
  const badge = card.querySelector(".ejection");
  badge.hidden = !a.ejection;
  if (a.ejection) {
    badge.textContent = a.ejection.label;
    badge.dataset.outcome = a.ejection.outcome;
    badge.classList.toggle("ejected", a.ejection.ejected);
  }
}

function onAlert(a) {
  const wall = document.getElementById("wall");
  let card = cards.get(a.frame_id);
  if (!card) {
    card = el("article", "card");
    const link = el("a", "details-link");
    link.href = "/alert/" + encodeURIComponent(a.frame_id);
    const img = el("img");
    img.alt = "evidence";
    link.append(img);
    card.append(link, el("div", "camera"), el("div", "score"), el("div", "latency"), el("div", "model"),
      el("div", "time"), el("div", "ejection"), feedbackButtons(a.frame_id));
    cards.set(a.frame_id, card);
    wall.prepend(card);
    while (cards.size > MAX_CARDS) {
      const [oldest, old] = cards.entries().next().value;
      old.remove();
      cards.delete(oldest);
    }
  }
  fill(card, a);
  noteCamera(a.camera_id);
  applyFilter();
}

function onCounts(counts) {
  const body = document.querySelector("#counts tbody");
  body.replaceChildren();
  Object.keys(counts).sort().forEach((camera) => {
    const row = el("tr");
    row.append(el("td", "camera", camera), el("td", null, counts[camera].frames), el("td", null, counts[camera].alerts));
    body.append(row);
  });
}

function connect() {
  const status = document.getElementById("status");
  const source = new EventSource("/events");
  source.addEventListener("open", () => { status.textContent = "live"; status.className = "status live"; });
  source.addEventListener("error", () => { status.textContent = "reconnecting…"; status.className = "status"; });
  source.addEventListener("alert", (ev) => onAlert(JSON.parse(ev.data)));
  source.addEventListener("counts", (ev) => onCounts(JSON.parse(ev.data)));
}

const filter = document.getElementById("camera-filter");
if (filter) filter.addEventListener("change", applyFilter);
const operator = document.getElementById("operator");
if (operator) operator.value = sessionStorage.getItem("operator") || "";
if (document.getElementById("wall")) connect();
