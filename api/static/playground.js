// The turnstream playground: plain JS over the service's own HTTP API, no build step.
//
// Streams are read with fetch (not EventSource) so that requests can carry the Authorization header and a
// dropped stream can be resumed with Last-Event-ID: every event carries its sequence number, the page keeps
// the last one it applied, and anything at or below it (a replay after a reconnect) is ignored, so no text
// is ever shown twice.

const KEY_STORE = "turnstream.apiKey";
const MODEL_STORE = "turnstream.model";
const TERMINAL = new Set(["response.completed", "response.failed", "response.incomplete"]);
const SETTLED = new Set(["completed", "failed", "cancelled", "incomplete"]);
const POLL_MS = 400;
const RECONNECT_MAX_MS = 2000;

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
};
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const state = {
  conversationId: null,
  running: null, // the turn in flight: a Run
  runs: new Map(), // response id -> Run, for the events panel
  shownRun: null, // the Run the events panel shows
  listCursor: null,
};

// --- HTTP ------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

let keyPrompt = null; // one dialog at a time, however many requests were refused

async function api(path, init = {}) {
  for (;;) {
    const headers = new Headers(init.headers || {});
    const key = localStorage.getItem(KEY_STORE);
    if (key) headers.set("Authorization", `Bearer ${key}`);
    if (init.body) headers.set("Content-Type", "application/json");
    // Relative to the page, so the playground also works behind a proxy that serves the API under a prefix.
    const res = await fetch(path.replace(/^\//, ""), { ...init, headers });
    if (res.status !== 401) return res;
    const body = await res.json().catch(() => null);
    if (!(await askForKey(body?.error?.message))) return res;
  }
}

async function apiJSON(path, init = {}) {
  const res = await api(path, init);
  const body = await res.json().catch(() => null);
  if (!res.ok) throw new ApiError(res.status, body?.error?.message || `${res.status} ${res.statusText}`);
  return body;
}

function askForKey(reason) {
  if (keyPrompt) return keyPrompt;
  const dialog = $("key-dialog");
  $("key-reason").textContent = reason
    ? `${reason} Make a key with: turnstream keys create --project NAME`
    : "Make a key with: turnstream keys create --project NAME";
  $("key-input").value = localStorage.getItem(KEY_STORE) || "";
  keyPrompt = new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        keyPrompt = null;
        const key = $("key-input").value.trim();
        if (dialog.returnValue === "save" && key) {
          localStorage.setItem(KEY_STORE, key);
          resolve(true);
        } else {
          resolve(false);
        }
      },
      { once: true },
    );
  });
  dialog.showModal();
  $("key-input").focus();
  return keyPrompt;
}

// Reads server-sent events from a fetch response; returns "done" on the `data: [DONE]` frame, or undefined
// when the body ends without it. Throws when the connection breaks.
async function readEvents(res, onEvent) {
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return undefined;
    buffer += value;
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
      const data = [];
      for (const line of block.split(/\r?\n/)) {
        if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (!data.length) continue; // a keep-alive comment, or id/event lines alone
      const text = data.join("\n");
      if (text === "[DONE]") {
        reader.cancel().catch(() => {});
        return "done";
      }
      onEvent(JSON.parse(text));
    }
  }
}

// --- a turn and what it shows ---------------------------------------------------------------------

class Run {
  constructor(view) {
    this.view = view;
    this.id = null;
    this.t0 = performance.now();
    this.lastSeq = -1;
    this.events = [];
    this.firstToken = null;
    this.status = "sending";
    this.usage = null;
    this.finished = false;
  }

  apply(event) {
    if (typeof event.sequence_number === "number") {
      if (event.sequence_number <= this.lastSeq) return; // replayed after a reconnect: already shown
      this.lastSeq = event.sequence_number;
    }
    const ms = Math.round(performance.now() - this.t0);
    this.events.push({ seq: event.sequence_number, type: event.type, ms });
    if (this.firstToken === null && /\.delta$/.test(event.type)) this.firstToken = ms;
    if (event.response) {
      this.status = event.response.status;
      if (!this.id) this.adopt(event.response.id);
      if (event.response.usage) this.usage = event.response.usage;
    }
    this.view.apply(event);
    if (TERMINAL.has(event.type)) this.finish(event.response);
    if (state.shownRun === this) renderEvents(this);
  }

  adopt(responseId) {
    this.id = responseId;
    state.runs.set(responseId, this);
    this.view.setResponse(this);
    $("cancel").disabled = false;
  }

  finish(response) {
    if (this.finished) return;
    this.finished = true;
    this.status = response.status;
    this.usage = response.usage || this.usage;
    this.view.finish(response);
    this.view.setTiming(this);
    if (state.running === this) setRunning(null);
  }
}

class TurnView {
  // `stored`: an answer read back from a conversation, whose tools ran long ago (no durations to show).
  constructor({ stored = false } = {}) {
    this.stored = stored;
    this.node = el("article", { class: "turn assistant", "aria-label": "Answer" });
    this.head = el("div", { class: "turn-head" }, el("span", { class: "who", text: "assistant" }));
    this.badge = el("span", { class: "badge", text: "sending" });
    this.head.append(this.badge);
    this.node.append(this.head);
    this.items = new Map(); // item id -> element to append deltas to
    this.tools = new Map(); // call id (or mcp_call item id) -> tool card
    this.approvals = []; // approval cards, answered from their buttons once the turn has ended
    $("transcript").append(this.node);
  }

  setResponse(run) {
    const button = el("button", { type: "button", class: "link", text: "Events" });
    button.setAttribute("aria-label", `Events of ${run.id}`);
    button.addEventListener("click", () => showEvents(run));
    this.head.append(button);
    this.node.dataset.responseId = run.id;
  }

  setStatus(status) {
    this.badge.textContent = status;
    this.badge.dataset.status = status;
  }

  setTiming(run) {
    if (!run.events.length) return;
    const first = run.firstToken === null ? "" : `first token ${run.firstToken} ms · `;
    this.head.append(el("span", { class: "timing muted", text: `${first}${run.events.at(-1).ms} ms` }));
  }

  apply(event) {
    const item = event.item;
    switch (event.type) {
      case "response.created":
      case "response.queued":
      case "response.in_progress":
        this.setStatus(event.response.status);
        break;
      case "response.output_item.added":
        this.open(item);
        break;
      case "response.content_part.added":
        if (event.part?.type === "refusal") this.items.get(event.item_id)?.classList.add("refusal");
        break;
      case "response.output_text.delta":
      case "response.refusal.delta":
      case "response.reasoning.delta":
      case "response.reasoning_text.delta":
      case "response.function_call_arguments.delta":
        this.items.get(event.item_id)?.append(event.delta);
        scrollDown();
        break;
      case "response.output_item.done":
        this.close(item);
        break;
      default:
        break;
    }
  }

  open(item) {
    if (item.type === "message") {
      const text = el("div", { class: "text" });
      this.node.append(text);
      this.items.set(item.id, text);
    } else if (item.type === "reasoning") {
      const text = el("pre", { class: "reasoning-text" });
      this.node.append(el("details", { class: "reasoning" }, el("summary", { text: "Reasoning" }), text));
      this.items.set(item.id, text);
    } else if (item.type === "function_call") {
      const card = toolCard(item.name);
      this.node.append(card.node);
      this.tools.set(item.call_id, card);
      this.items.set(item.id, card.args);
    } else if (item.type === "function_call_output") {
      const card = this.tools.get(item.call_id);
      if (card && !this.stored) {
        card.started = performance.now();
        card.state.textContent = "running…";
      }
    } else if (item.type === "mcp_approval_request") {
      const card = approvalCard(item);
      this.node.append(card.node);
      this.approvals.push(card);
    } else if (item.type === "mcp_call") {
      // The run of a tool a person approved (or why it did not run): shown as any tool call.
      const card = toolCard(item.name);
      this.node.append(card.node);
      this.tools.set(item.id, card);
    }
    scrollDown();
  }

  close(item) {
    if (item.type === "function_call") {
      const card = this.tools.get(item.call_id);
      if (card) {
        card.args.textContent = pretty(item.arguments);
        card.state.textContent = "called";
      }
    } else if (item.type === "function_call_output") {
      const card = this.tools.get(item.call_id);
      if (card) {
        card.result.textContent = pretty(item.output);
        card.state.textContent = "done";
        if (card.started !== undefined) card.duration.textContent = `${Math.round(performance.now() - card.started)} ms`;
      }
    } else if (item.type === "mcp_call") {
      const card = this.tools.get(item.id);
      if (card) {
        card.args.textContent = pretty(item.arguments);
        card.result.textContent = item.error ? item.error.content : pretty(item.output ?? "");
        card.state.textContent = item.error ? "not run" : "done";
        card.node.classList.toggle("refused", Boolean(item.error));
      }
    } else if (item.type === "reasoning") {
      const text = this.items.get(item.id);
      if (text && !text.textContent) text.textContent = (item.content || []).map((p) => p.text).join("");
    } else if (item.type === "message") {
      // The streamed text is the item's text; a message that arrived whole (read back, polled) is filled here.
      const text = this.items.get(item.id);
      const part = item.content?.[0];
      if (text && !text.textContent && part) text.textContent = part.text ?? part.refusal ?? "";
      if (text && part?.type === "refusal") text.classList.add("refusal");
    }
  }

  finish(response) {
    this.setStatus(response.status);
    // The turn waits on a person: its first request takes the focus, so it is answered from the keyboard.
    this.approvals.find((card) => !card.answered)?.approve.focus();
    if (response.error) this.node.append(el("p", { class: "error", role: "alert", text: response.error.message }));
    else if (response.status === "incomplete" && response.incomplete_details)
      this.node.append(el("p", { class: "muted", text: `incomplete: ${response.incomplete_details.reason}` }));
  }

  renderFinal(response) {
    // A background turn: its output arrives whole when the poll sees it settle.
    for (const item of response.output || []) {
      this.open(item);
      this.close(item);
    }
    this.finish(response);
  }
}

function toolCard(name) {
  const state_ = el("span", { class: "tool-state", text: "calling…" });
  const duration = el("span", { class: "tool-duration" });
  const args = el("pre", { class: "tool-args", "aria-label": "arguments" });
  const result = el("pre", { class: "tool-result", "aria-label": "result" });
  const node = el(
    "section",
    { class: "tool", "aria-label": `Tool call ${name}` },
    el("div", { class: "tool-head" }, el("span", { class: "tool-name", text: name }), state_, duration),
    el("div", { class: "tool-label", text: "arguments" }),
    args,
    el("div", { class: "tool-label", text: "result" }),
    result,
  );
  return { node, args, result, state: state_, duration, started: undefined };
}

// A tool call that waits on a person: what would run, and Approve / Deny (with an optional reason). The answer
// is the next turn of the conversation, carrying an `mcp_approval_response` item.
function approvalCard(item) {
  const reason = el("input", { type: "text", class: "approval-reason", autocomplete: "off" });
  const approve = el("button", { type: "button", text: "Approve" });
  const deny = el("button", { type: "button", text: "Deny" });
  const verdict = el("span", { class: "tool-state", text: "waiting for approval" });
  const node = el(
    "section",
    { class: "tool approval", "aria-label": `Approval request ${item.name}` },
    el("div", { class: "tool-head" }, el("span", { class: "tool-name", text: item.name }), verdict,
      el("span", { class: "tool-duration", text: item.server_label })),
    el("div", { class: "tool-label", text: "arguments" }),
    el("pre", { class: "tool-args", "aria-label": "arguments", text: pretty(item.arguments) }),
    el("label", { class: "field approval-field" }, "Reason (optional)", reason),
    el("div", { class: "composer-actions" }, approve, deny),
  );
  const card = { node, approve, item, answered: false };
  card.settle = (text) => {
    card.answered = true;
    verdict.textContent = text;
    for (const control of [reason, approve, deny]) control.disabled = true;
  };
  const answer = (approved) => {
    if (state.running || card.answered) return;
    card.settle(approved ? "approved" : "denied");
    answerApproval(item, approved, reason.value.trim());
  };
  approve.addEventListener("click", () => answer(true));
  deny.addEventListener("click", () => answer(false));
  return card;
}

function answerApproval(item, approve, reason) {
  const answer = { type: "mcp_approval_response", approval_request_id: item.id, approve };
  if (reason) answer.reason = reason;
  const said = `${approve ? "Approved" : "Denied"} ${item.name}${reason ? `: ${reason}` : ""}`;
  // The agent that asked (`server_label`) answers: the request is its own.
  send(said, [answer], item.server_label);
}

function pretty(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 1);
  } catch {
    return text;
  }
}

function scrollDown() {
  const transcript = $("transcript");
  transcript.scrollTop = transcript.scrollHeight;
}

function userMessage(text) {
  $("transcript").append(
    el("article", { class: "turn user", "aria-label": "You" }, el("div", { class: "who", text: "you" }), el("div", { class: "text", text })),
  );
  scrollDown();
}

function setStatus(text) {
  $("status").textContent = text;
}

function setRunning(run) {
  state.running = run;
  $("cancel").disabled = !(run && run.id);
  $("send").disabled = Boolean(run);
}

// --- sending, streaming, resuming, polling, cancelling ----------------------------------------------

// `input` defaults to the text typed; an approval's answer sends its item, and the model that asked.
async function send(text, input = text, model = $("model").value) {
  const run = new Run(new TurnView());
  setRunning(run);
  try {
    if (!state.conversationId) {
      const conversation = await apiJSON("/v1/conversations", {
        method: "POST",
        body: JSON.stringify({ metadata: { title: text.slice(0, 60) } }),
      });
      openedConversation(conversation, true);
    }
    const body = { model, input, conversation: state.conversationId };
    userMessage(text);
    $("transcript").append(run.view.node); // after the user's message
    if ($("background").checked) await runInBackground(run, body);
    else await runStreaming(run, body);
  } catch (err) {
    run.view.node.append(el("p", { class: "error", role: "alert", text: err.message }));
    run.view.setStatus("error");
    setStatus("");
    if (state.running === run) setRunning(null);
  }
}

async function runStreaming(run, body) {
  let res = await api("/v1/responses", { method: "POST", body: JSON.stringify({ ...body, stream: true }) });
  if (!res.ok) {
    const error = await res.json().catch(() => null);
    throw new ApiError(res.status, error?.error?.message || res.statusText);
  }
  for (let attempt = 0; ; ) {
    try {
      await readEvents(res, (event) => run.apply(event));
    } catch {
      // The connection broke mid-stream; resumed below.
    }
    if (run.finished) {
      setStatus("");
      return;
    }
    if (!run.id) throw new Error("The connection dropped before the response started.");
    setStatus(`Connection lost; resuming after event ${run.lastSeq}…`);
    for (;;) {
      await sleep(Math.min(RECONNECT_MAX_MS, 100 * 2 ** attempt++));
      try {
        res = await api(`/v1/responses/${run.id}?stream=true`, { headers: { "Last-Event-ID": String(run.lastSeq) } });
        if (res.ok) break;
        if (res.status === 404 || res.status === 400) throw new Error(`Cannot resume ${run.id}: ${res.status}`);
      } catch (err) {
        if (err.message.startsWith("Cannot resume")) throw err;
      }
    }
    attempt = 0;
    setStatus(`Reconnected; resumed after event ${run.lastSeq}.`);
  }
}

async function runInBackground(run, body) {
  const created = await apiJSON("/v1/responses", { method: "POST", body: JSON.stringify({ ...body, background: true }) });
  run.adopt(created.id);
  run.view.setStatus(created.status);
  setStatus(`Background: ${created.status}; polling…`);
  let response = created;
  while (!SETTLED.has(response.status)) {
    await sleep(POLL_MS);
    try {
      response = await apiJSON(`/v1/responses/${run.id}`);
    } catch (err) {
      if (err instanceof ApiError) throw err;
      continue; // the connection dropped; poll again
    }
    run.status = response.status;
    run.view.setStatus(response.status);
    setStatus(`Background: ${response.status}`);
  }
  run.finished = true;
  run.usage = response.usage;
  run.view.renderFinal(response);
  setStatus("");
  if (state.running === run) setRunning(null);
  if (state.shownRun === run) renderEvents(run);
}

async function cancel() {
  const run = state.running;
  if (!run?.id) return;
  $("cancel").disabled = true;
  setStatus("Cancelling…");
  try {
    await apiJSON(`/v1/responses/${run.id}/cancel`, { method: "POST" });
  } catch (err) {
    setStatus(`Cancel failed: ${err.message}`);
  }
}

// --- the events panel --------------------------------------------------------------------------------

function showEvents(run) {
  state.shownRun = run;
  $("events").hidden = false;
  renderEvents(run);
  $("close-events").focus();
  if (!run.events.length && run.finished) replayEvents(run).catch(showError);
}

// A background turn was polled, not streamed: its events are read back from the start of its stream,
// with no timings (the page did not see them arrive).
async function replayEvents(run) {
  const res = await api(`/v1/responses/${run.id}?stream=true`, { headers: { "Last-Event-ID": "-1" } });
  if (!res.ok) throw new ApiError(res.status, `Cannot read the events of ${run.id}`);
  const events = [];
  await readEvents(res, (event) => events.push({ seq: event.sequence_number, type: event.type, ms: null }));
  run.events = events;
  if (state.shownRun === run) renderEvents(run);
}

function renderEvents(run) {
  $("events-response").textContent = run.id || "";
  const summary = $("events-summary");
  const usage = run.usage;
  const rows = [
    ["status", run.status],
    ["time to first token", run.firstToken === null ? "–" : `${run.firstToken} ms`],
    ["events", String(run.events.length)],
  ];
  if (run.finished && run.events.at(-1)?.ms != null) rows.push(["total", `${run.events.at(-1).ms} ms`]);
  if (usage) {
    rows.push(["input tokens", String(usage.input_tokens)], ["output tokens", String(usage.output_tokens)]);
    const reasoning = usage.output_tokens_details?.reasoning_tokens;
    if (reasoning) rows.push(["reasoning tokens", String(reasoning)]);
  }
  summary.replaceChildren(...rows.flatMap(([term, value]) => [el("dt", { text: term }), el("dd", { text: value })]));
  // Rows are appended as events arrive (a long answer has thousands), rebuilt only for another run.
  const table = $("events-rows");
  if (table.dataset.run !== (run.id || "") || table.children.length > run.events.length) {
    table.replaceChildren();
    table.dataset.run = run.id || "";
  }
  const firstDelta = run.events.findIndex((e) => /\.delta$/.test(e.type));
  table.append(
    ...run.events.slice(table.children.length).map((e, i, rest) => {
      const index = run.events.length - rest.length + i;
      return el(
        "tr",
        index === firstDelta ? { class: "first-token", title: "first token" } : {},
        el("td", { class: "mono", text: String(e.seq ?? "") }),
        el("td", { class: "mono", text: e.type.replace(/^response\./, ""), title: e.type }),
        el("td", { class: "mono num", text: e.ms === null ? "–" : String(e.ms) }),
      );
    }),
  );
}

// --- conversations -----------------------------------------------------------------------------------

function conversationEntry(conversation) {
  const title = conversation.metadata?.title || conversation.id;
  const when = new Date(conversation.created_at * 1000).toLocaleString();
  const button = el("button", { type: "button", class: "conversation", "data-id": conversation.id },
    el("span", { class: "title", text: title }), el("span", { class: "when muted", text: when }));
  button.addEventListener("click", () => reopen(conversation));
  return el("li", {}, button);
}

async function loadConversations(more = false) {
  const params = new URLSearchParams({ limit: "20" });
  if (more && state.listCursor) params.set("after", state.listCursor);
  const page = await apiJSON(`/v1/conversations?${params}`);
  const list = $("conversation-list");
  if (!more) list.replaceChildren();
  list.append(...page.data.map(conversationEntry));
  state.listCursor = page.last_id;
  $("more-conversations").hidden = !page.has_more;
  $("conversations-empty").hidden = list.children.length > 0;
  markCurrent();
}

function markCurrent() {
  for (const button of document.querySelectorAll("#conversation-list .conversation")) {
    if (button.dataset.id === state.conversationId) button.setAttribute("aria-current", "true");
    else button.removeAttribute("aria-current");
  }
}

function openedConversation(conversation, isNew) {
  state.conversationId = conversation.id;
  $("conversation-label").textContent = conversation.metadata?.title || conversation.id;
  if (isNew) {
    $("conversation-list").prepend(conversationEntry(conversation));
    $("conversations-empty").hidden = true;
  }
  markCurrent();
}

async function reopen(conversation) {
  if (state.running) return;
  openedConversation(conversation, false);
  $("transcript").replaceChildren();
  let after = null;
  let view = null;
  const asked = []; // approval cards, settled below when a later item answers them
  const verdicts = new Map(); // approval request id -> what became of it
  for (;;) {
    const params = new URLSearchParams({ order: "asc", limit: "100" });
    if (after) params.set("after", after);
    const page = await apiJSON(`/v1/conversations/${conversation.id}/items?${params}`);
    for (const item of page.data) {
      if (item.type === "message" && item.role === "user") {
        userMessage(item.content.map((p) => p.text ?? "").join(""));
        view = null;
      } else if (item.type === "mcp_approval_response") {
        const verdict = item.approve ? "approved" : "denied";
        verdicts.set(item.approval_request_id, verdict);
        userMessage(`${verdict[0].toUpperCase()}${verdict.slice(1)}${item.reason ? `: ${item.reason}` : ""}`);
        view = null;
      } else {
        if (item.type === "mcp_call" && !verdicts.has(item.approval_request_id))
          verdicts.set(item.approval_request_id, item.error ? "not run" : "approved");
        if (!view) {
          view = new TurnView({ stored: true });
          view.setStatus("stored");
        }
        view.open(item);
        view.close(item);
        if (item.type === "mcp_approval_request") asked.push(view.approvals.at(-1));
      }
    }
    if (!page.has_more) break;
    after = page.last_id;
  }
  for (const card of asked) if (verdicts.has(card.item.id)) card.settle(verdicts.get(card.item.id));
  closeNarrowSidebar();
  $("message").focus();
}

function newConversation() {
  if (state.running) return;
  state.conversationId = null;
  $("conversation-label").textContent = "New conversation";
  $("transcript").replaceChildren();
  markCurrent();
  closeNarrowSidebar();
  $("message").focus();
}

function closeNarrowSidebar() {
  document.body.classList.remove("show-conversations");
  $("toggle-conversations").setAttribute("aria-expanded", "false");
}

// --- start -------------------------------------------------------------------------------------------

async function loadModels() {
  const models = await apiJSON("/v1/models");
  const select = $("model");
  const remembered = localStorage.getItem(MODEL_STORE);
  select.replaceChildren(...models.data.map((m) => el("option", { value: m.id, text: m.id })));
  const ids = models.data.map((m) => m.id);
  select.value = ids.includes(remembered) ? remembered : ids.includes("turnstream-mock") ? "turnstream-mock" : ids[0];
}

function wire() {
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("message").value.trim();
    if (!text || state.running) return;
    $("message").value = "";
    send(text);
  });
  $("message").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("cancel").addEventListener("click", cancel);
  $("new-conversation").addEventListener("click", newConversation);
  $("more-conversations").addEventListener("click", () => loadConversations(true).catch(showError));
  $("model").addEventListener("change", () => localStorage.setItem(MODEL_STORE, $("model").value));
  $("close-events").addEventListener("click", () => {
    $("events").hidden = true;
    state.shownRun = null;
    $("message").focus();
  });
  $("set-key").addEventListener("click", async () => {
    if (await askForKey(null)) start();
  });
  $("toggle-conversations").addEventListener("click", () => {
    const open = document.body.classList.toggle("show-conversations");
    $("toggle-conversations").setAttribute("aria-expanded", String(open));
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !$("events").hidden && !$("key-dialog").open) $("close-events").click();
  });
}

function showError(err) {
  setStatus(err.message);
}

async function start() {
  try {
    await loadModels();
    await loadConversations();
    setStatus(await fleetWarning());
  } catch (err) {
    showError(err);
  }
}

// Turns sent while no worker is alive only wait in the queue: say so before anyone waits.
async function fleetWarning() {
  const res = await fetch("readyz").catch(() => null);
  if (!res || res.ok) return "";
  const body = await res.json().catch(() => null);
  return body?.error?.message || `The service is not ready (${res.status}).`;
}

wire();
start();
$("message").focus();
