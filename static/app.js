// app.js: the chat page's UI. The wire protocol lives in flowgate-client.js.
//
// The token arrives in the URL fragment (`#token=<jwt>`, never sent to the server in a URL), is
// kept in sessionStorage and removed from the address bar. `?agent=<id>` preselects an agent.
// Text is always inserted with textContent, never as HTML.

import { FlowgateClient, describeError } from "./flowgate-client.js";

const TOKEN_KEY = "flowgate.token";
const AGENT_KEY = "flowgate.agent";
const AGENTS_TIMEOUT_MS = 10000;
/** Findings of an `invalid_workflow` error shown in the banner. */
const MAX_DETAILS = 5;

const $ = (id) => document.getElementById(id);
const ui = {
  agent: $("agent"),
  description: $("agent-description"),
  connection: $("connection"),
  connectionLabel: $("connection-label"),
  tokenForm: $("token-form"),
  tokenEntry: $("token-entry"),
  tokenInput: $("token-input"),
  error: $("error"),
  messages: $("messages"),
  composer: $("composer"),
  input: $("input"),
  send: $("send"),
  stop: $("stop"),
  runInfo: $("run-info"),
  timeline: $("timeline"),
};

let token = takeToken();
let client = null;
let conversation = [];
let agents = [];
/** The answer being streamed: {bubble, text, message, prompt, elements: Map}. */
let answer = null;

function takeToken() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const fromUrl = fragment.get("token");
  if (fromUrl) {
    sessionStorage.setItem(TOKEN_KEY, fromUrl);
    clearFragment();
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

function clearFragment() {
  window.history.replaceState(null, "", location.pathname + location.search);
}

function showError(message) {
  ui.error.textContent = message;
  ui.error.hidden = !message;
}

function setConnection(state, detail = {}) {
  ui.connection.dataset.state = state;
  let label = state;
  if (state === "connecting" && detail.retryIn) label = `reconnecting in ${Math.round(detail.retryIn / 1000)} s`;
  else if (state === "connecting") label = "connecting…";
  else if (state === "error" && detail.reason) label = "error";
  ui.connectionLabel.textContent = label;
  ui.connection.title = detail.reason || "";
}

function setBusy(busy) {
  document.body.dataset.run = busy ? "running" : "idle";
  ui.send.disabled = busy || !client;
  ui.stop.disabled = !busy;
  ui.input.disabled = !client;
}

function addMessage(role, text) {
  const li = document.createElement("li");
  li.className = `message ${role}`;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = role === "user" ? "You" : agentName();
  const body = document.createElement("div");
  body.className = "body";
  body.textContent = text;
  li.append(who, body);
  ui.messages.append(li);
  li.scrollIntoView({ block: "end" });
  return li;
}

function agentName() {
  const a = agents.find((x) => x.agent_id === ui.agent.value);
  return a ? a.name : ui.agent.value;
}

// ---- timeline ------------------------------------------------------------------------------

function timelineEntry(detail) {
  const key = detail.element_id || `#${answer.elements.size}`;
  let li = answer.elements.get(key);
  if (!li) {
    li = document.createElement("li");
    li.className = "step";
    const icon = document.createElement("span");
    icon.className = "icon";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = detail.element_name || detail.element_id || "element";
    const kind = document.createElement("span");
    kind.className = "kind";
    kind.textContent = detail.element_type || "";
    const note = document.createElement("span");
    note.className = "note";
    li.append(icon, name, kind, note);
    if (detail.backtracking) {
      const badge = document.createElement("span");
      badge.className = "badge";
      badge.textContent = "backtracking";
      badge.title = "Ran first because a later element needs it";
      li.append(badge);
    }
    answer.elements.set(key, li);
    ui.timeline.append(li);
  }
  return li;
}

function onElement(detail) {
  if (!answer) return;
  const li = timelineEntry(detail);
  li.dataset.state = { started: "running", completed: "done", error: "error" }[detail.phase] || detail.phase;
  li.querySelector(".icon").textContent = { started: "▶", completed: "✓", error: "✗" }[detail.phase] || "•";
  if (detail.phase === "error") li.querySelector(".note").textContent = detail.error || "failed";
}

// ---- the client ----------------------------------------------------------------------------

function connectTo(agentId) {
  if (client) client.close();
  client = null;
  answer = null;
  conversation = [];
  ui.messages.replaceChildren();
  ui.timeline.replaceChildren();
  ui.runInfo.textContent = "No run yet.";
  showError("");
  if (!agentId || !token) {
    setBusy(false);
    return;
  }
  sessionStorage.setItem(AGENT_KEY, agentId);
  const a = agents.find((x) => x.agent_id === agentId);
  ui.description.textContent = a && a.description ? a.description : "";
  client = new FlowgateClient({ agentId, token });
  client.addEventListener("state", (e) => setConnection(e.detail.state, e.detail));
  client.addEventListener("status", (e) => {
    if (e.detail.message) ui.runInfo.textContent = e.detail.message;
  });
  client.addEventListener("run", (e) => {
    ui.runInfo.textContent = `Run ${e.detail.run_id}`;
  });
  client.addEventListener("element", (e) => onElement(e.detail));
  client.addEventListener("chunk", (e) => {
    if (!answer) return;
    answer.text += e.detail.content;
    answer.body.textContent = answer.text;
    answer.bubble.scrollIntoView({ block: "end" });
  });
  client.addEventListener("final", (e) => {
    if (answer && !answer.text) {
      answer.text = e.detail.text;
      answer.body.textContent = answer.text;
    }
  });
  client.addEventListener("error", (e) => {
    const details = Array.isArray(e.detail.details) ? e.detail.details.slice(0, MAX_DETAILS) : [];
    const lines = details.map((d) => `• ${d.pointer || "/"}: ${d.message || ""}`);
    showError([e.detail.message, ...lines].join("\n"));
    if (e.detail.fatal && e.detail.code === "unauthenticated") ui.tokenForm.hidden = false;
  });
  client.addEventListener("end", (e) => onEnd(e.detail));
  client.connect();
  setBusy(false);
}

function send(text) {
  if (!client || client.busy) return;
  showError("");
  ui.timeline.replaceChildren();
  ui.runInfo.textContent = "Sending…";
  addMessage("user", text);
  const bubble = addMessage("assistant", "");
  bubble.classList.add("streaming");
  answer = { bubble, body: bubble.querySelector(".body"), text: "", prompt: text, elements: new Map() };
  client.run(text, conversation.slice());
  setBusy(true);
}

function onEnd(detail) {
  const done = answer;
  answer = null;
  setBusy(false);
  if (!done) return;
  done.bubble.classList.remove("streaming");
  done.bubble.dataset.end = detail.type;
  const labels = {
    flow_completed: "Done",
    flow_cancelled: "Stopped",
    flow_error: "Failed",
    error: "Failed",
    disconnected: "Disconnected",
  };
  ui.runInfo.textContent = labels[detail.type] || detail.type;
  // Elements still marked running did not finish: the run ended under them.
  for (const li of done.elements.values()) {
    if (li.dataset.state !== "running") continue;
    li.dataset.state = "stopped";
    li.querySelector(".icon").textContent = "■";
  }
  if (detail.type === "flow_completed") {
    if (!done.text) done.body.textContent = "(no text output)";
    conversation.push({ role: "user", content: done.prompt }, { role: "assistant", content: done.text });
    return;
  }
  let why = describeError(detail.data);
  if (detail.type === "flow_cancelled") why = "stopped";
  else if (detail.type === "disconnected") why = "disconnected";
  if (!done.text) {
    done.body.textContent = why === "stopped" ? "(stopped before any text)" : why;
    return;
  }
  const note = document.createElement("span");
  note.className = "end-note";
  note.textContent = `(${why})`;
  done.bubble.append(note);
}

// ---- agents --------------------------------------------------------------------------------

async function loadAgents() {
  ui.tokenForm.hidden = Boolean(token);
  if (!token) {
    setConnection("disconnected");
    ui.agent.replaceChildren(new Option("no token", ""));
    return;
  }
  let response;
  try {
    response = await fetch("/api/agents", {
      headers: { Authorization: `Bearer ${token}` },
      signal: AbortSignal.timeout(AGENTS_TIMEOUT_MS),
    });
  } catch (e) {
    showError(`Cannot load the agent list: ${e.message}`);
    return;
  }
  if (!response.ok) {
    let body = {};
    try {
      body = await response.json();
    } catch {
      body = { error: `HTTP ${response.status}` };
    }
    showError(describeError(body));
    if (response.status === 401) ui.tokenForm.hidden = false;
    ui.agent.replaceChildren(new Option("—", ""));
    return;
  }
  agents = await response.json();
  const wanted = new URLSearchParams(location.search).get("agent") || sessionStorage.getItem(AGENT_KEY);
  const options = agents.map((a) => new Option(a.status === "Active" ? a.name : `${a.name} (draft)`, a.agent_id));
  if (wanted && !agents.some((a) => a.agent_id === wanted)) options.unshift(new Option(`${wanted} (not listed)`, wanted));
  ui.agent.replaceChildren(...options);
  ui.agent.disabled = options.length === 0;
  if (options.length === 0) {
    showError("No agents are available to you.");
    return;
  }
  ui.agent.value = wanted && options.some((o) => o.value === wanted) ? wanted : options[0].value;
  connectTo(ui.agent.value);
}

// ---- wiring --------------------------------------------------------------------------------

ui.agent.addEventListener("change", () => connectTo(ui.agent.value));
ui.composer.addEventListener("submit", (e) => {
  e.preventDefault();
  const text = ui.input.value.trim();
  if (!text) return;
  ui.input.value = "";
  send(text);
});
ui.input.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    ui.composer.requestSubmit();
  }
});
ui.stop.addEventListener("click", () => {
  if (!client || !client.busy) return;
  client.cancel();
  ui.stop.disabled = true;
  ui.runInfo.textContent = "Stopping…";
});
ui.tokenEntry.addEventListener("submit", (e) => {
  e.preventDefault();
  const value = ui.tokenInput.value.trim();
  if (!value) return;
  token = value;
  sessionStorage.setItem(TOKEN_KEY, token);
  ui.tokenInput.value = "";
  showError("");
  loadAgents();
});
window.addEventListener("hashchange", () => {
  const fresh = takeToken();
  if (fresh && fresh !== token) {
    token = fresh;
    if (client) client.setToken(token);
    else loadAgents();
  }
});

setBusy(false);
loadAgents();
