// flowgate-client.js: a dependency-free client of flowgate's chat WebSocket
// (`GET /api/chat/execute/{agent_id}`, docs/protocol.md). Copy it into any frontend.
//
//   import { FlowgateClient } from "./flowgate-client.js";
//   const client = new FlowgateClient({ agentId: "assistant", token });
//   client.addEventListener("chunk", (e) => append(e.detail.content));
//   client.addEventListener("end", (e) => console.log(e.detail.type)); // flow_completed | ...
//   client.run("Hello", history);
//   client.cancel();
//
// What it does for you:
// - authenticates with the `Sec-WebSocket-Protocol: bearer, <jwt>` transport (the token never
//   appears in a URL);
// - tracks the run in progress by `run_id` and `seq`, drops frames it has already seen, and emits
//   exactly one `end` event per run;
// - reconnects with exponential backoff (1, 2, 4, 8, 16 s, then every 30 s) and resumes the run in
//   progress with `{"type":"resume","run_id","after_seq"}`, so no text is lost or duplicated;
// - turns every error code and close code into a readable sentence.
//
// Events (all `CustomEvent`s, payload in `detail`):
//   state    {state: "disconnected"|"connecting"|"connected"|"error", retryIn?, code?, reason?}
//   frame    every new server frame (after de-duplication), as parsed JSON
//   run      {run_id}: the gateway accepted the run request
//   status   {message}
//   element  {phase: "started"|"completed"|"error", element_id, element_name, element_type,
//             backtracking, error?, outputs?}
//   chunk    {content, element_id}
//   final    {text}: an end element's `final_output.text_output`
//   error    {code, error, message, details?, fatal}: `message` is the readable sentence
//   end      {type: "flow_completed"|"flow_error"|"flow_cancelled"|"error"|"disconnected",
//             run_id, data}

/** Readable sentences for the error codes of docs/protocol.md section 9. */
export const ERROR_MESSAGES = {
  unauthenticated: "You are not signed in, or your token has expired. Open a fresh link with a token.",
  forbidden: "You are not allowed to run this agent.",
  agent_not_found: "There is no agent with this id.",
  workflow_not_found: "This agent has no workflow to run (it may not be published yet).",
  invalid_workflow: "This agent's workflow is invalid and cannot run.",
  invalid_request: "The gateway did not accept the request.",
  store_unavailable: "The agent database is unavailable right now. Try again in a moment.",
  engine_unavailable: "The execution engine is unavailable right now. Try again in a moment.",
  engine_timeout: "The execution engine stopped responding.",
  engine_lost: "The connection to the execution engine was lost during the run.",
  engine_protocol_error: "The execution engine sent something the gateway could not understand.",
  too_many_runs: "Too many runs at once. Wait for one to finish and try again.",
  internal: "Something went wrong inside the gateway.",
  connection_failed: "Cannot reach the gateway. Still trying…",
  connection_lost: "The connection was lost before the run started. Send the message again.",
};

/** Readable sentences for WebSocket close codes (docs/protocol.md section 10). */
export const CLOSE_REASONS = {
  1000: "The gateway closed the connection.",
  1001: "The gateway is going away.",
  1002: "The gateway refused a malformed WebSocket frame (protocol error).",
  1006: "The connection dropped.",
  1008: "The gateway refused a message (policy violation).",
  1009: "The message is too big.",
  1011: "The gateway hit an internal error.",
  1012: "The gateway is restarting.",
  1013: "The gateway is overloaded. Try again later.",
  4401: ERROR_MESSAGES.unauthenticated,
  4403: ERROR_MESSAGES.forbidden,
  4404: ERROR_MESSAGES.agent_not_found,
  4408: "The connection was idle or too slow and was closed.",
  4429: "Too many requests. Slow down and try again later.",
};

/** Close codes after which reconnecting cannot help. */
const FATAL_CLOSE = new Set([1002, 1008, 1009, 4401, 4403, 4404]);
const CLOSE_CODE_ERRORS = { 4401: "unauthenticated", 4403: "forbidden", 4404: "agent_not_found" };

/** Run-ending event types (exactly one per run). */
export const TERMINAL = new Set(["flow_completed", "flow_error", "flow_cancelled"]);

/** The readable sentence for an error frame's `data` ({error, code}). */
export function describeError(data) {
  const code = data && data.code;
  const known = code && ERROR_MESSAGES[code];
  const text = data && typeof data.error === "string" ? data.error : "";
  if (known && text && text !== known) return `${known} (${text})`;
  return known || text || "Unknown error.";
}

/** The WebSocket URL of `agentId` on the gateway at `base` (http(s) or ws(s); default: this page). */
export function executeUrl(base, agentId) {
  const url = new URL(base || globalThis.location.href);
  url.protocol = url.protocol === "https:" || url.protocol === "wss:" ? "wss:" : "ws:";
  const prefix = url.pathname.replace(/\/+$/, "").replace(/\/(index\.html)?$/, "");
  url.pathname = `${prefix}/api/chat/execute/${encodeURIComponent(agentId)}`;
  url.search = "";
  url.hash = "";
  return url.toString();
}

export class FlowgateClient extends EventTarget {
  /**
   * @param {object} options
   * @param {string} options.agentId
   * @param {string} options.token JWT, sent as the `bearer` subprotocol
   * @param {string} [options.baseUrl] gateway base URL; default: the page's origin
   * @param {number} [options.initialDelay=1000] first reconnect delay (ms), doubled per attempt
   * @param {number} [options.maxDelay=30000] longest reconnect delay (ms)
   * @param {number} [options.stableAfter=5000] an open connection this old resets the backoff
   * @param {number} [options.failuresBeforeError=3] failed attempts before an `error` event
   * @param {typeof WebSocket} [options.WebSocket] an implementation (tests, Node)
   */
  constructor(options) {
    super();
    this.agentId = options.agentId;
    this.token = options.token;
    this.url = executeUrl(options.baseUrl, options.agentId);
    this.initialDelay = options.initialDelay ?? 1000;
    this.maxDelay = options.maxDelay ?? 30000;
    this.stableAfter = options.stableAfter ?? 5000;
    this.failuresBeforeError = options.failuresBeforeError ?? 3;
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    this.socket = null;
    this.state = "disconnected";
    this.attempt = 0;
    this.failures = 0;
    this.retryTimer = null;
    this.stableTimer = null;
    this.stopped = false;
    /** The run in progress: {id, lastSeq, request, sent, started, cancelRequested} or null. */
    this.current = null;
  }

  /** Open the connection (idempotent). */
  connect() {
    this.stopped = false;
    if (this.socket || this.retryTimer) return;
    this.open();
  }

  /** Start a run. Throws when a run is still in progress. */
  run(message, conversationHistory = [], extra = {}) {
    if (this.current) throw new Error("a run is already in progress");
    const request = { ...extra, message, conversation_history: conversationHistory };
    this.current = { id: null, lastSeq: 0, request, sent: false, started: false, cancelRequested: false };
    this.connect();
    this.flush();
  }

  /** Continue watching a run (e.g. after a page reload) from after `afterSeq`. */
  resume(runId, afterSeq = 0) {
    if (this.current) throw new Error("a run is already in progress");
    this.current = { id: runId, lastSeq: afterSeq, request: null, sent: true, started: true, cancelRequested: false, needsResume: true };
    this.connect();
    this.flush();
  }

  /** Ask the gateway to cancel the run in progress; its `end` event follows. */
  cancel() {
    if (!this.current || this.current.cancelRequested) return;
    this.current.cancelRequested = true;
    this.flush();
  }

  /** Replace the token; an open connection is re-authenticated in band. */
  setToken(token) {
    this.token = token;
    if (this.isOpen()) this.send({ type: "auth", token });
  }

  /** Close for good (no reconnect). A run in progress ends with `end` type `disconnected`. */
  close() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    clearTimeout(this.stableTimer);
    this.retryTimer = null;
    if (this.socket) this.socket.close(1000, "client closed");
    this.socket = null;
    this.endRun("disconnected", {});
    this.setState("disconnected");
  }

  /** Is a run in progress? */
  get busy() {
    return this.current !== null;
  }

  // ---- internals -------------------------------------------------------------------------

  isOpen() {
    return this.socket && this.socket.readyState === 1;
  }

  emit(type, detail) {
    if (type === "error") this.lastError = detail;
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  setState(state, extra = {}) {
    this.state = state;
    this.emit("state", { state, ...extra });
  }

  send(frame) {
    this.socket.send(JSON.stringify(frame));
  }

  /** Send what the run in progress still needs: the request or a resume, then a cancel. */
  flush() {
    const run = this.current;
    if (!run || !this.isOpen()) return;
    if (!run.sent) {
      run.sent = true;
      this.send(run.request);
    } else if (run.needsResume) {
      run.needsResume = false;
      this.send({ type: "resume", run_id: run.id, after_seq: run.lastSeq });
    }
    if (run.cancelRequested && !run.cancelSent) {
      run.cancelSent = true;
      this.send({ type: "cancel" });
    }
  }

  open() {
    this.retryTimer = null;
    this.setState("connecting");
    let socket;
    try {
      socket = new this.WebSocket(this.url, ["bearer", this.token]);
    } catch (e) {
      this.emit("error", { code: "invalid_request", error: String(e), message: String(e), fatal: true });
      this.setState("error");
      return;
    }
    this.socket = socket;
    socket.onopen = () => {
      this.failures = 0;
      this.lastError = null;
      this.setState("connected");
      this.stableTimer = setTimeout(() => { this.attempt = 0; }, this.stableAfter);
      if (this.current && this.current.id) {
        this.current.needsResume = true;
        this.current.cancelSent = false; // the cancel may not have arrived: ask again
      }
      this.flush();
    };
    socket.onmessage = (event) => this.onFrame(event.data);
    socket.onclose = (event) => this.onClose(socket, event);
  }

  onFrame(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return; // not JSON: not ours to interpret
    }
    if (!frame || typeof frame !== "object") return;
    const run = this.current;
    if (frame.run_id !== undefined && run) {
      if (run.id === null && run.sent) {
        run.id = frame.run_id;
        this.emit("run", { run_id: run.id });
      }
      if (frame.run_id !== run.id) return; // an older run's late frame
      if (typeof frame.seq === "number") {
        if (frame.seq <= run.lastSeq) return; // already seen (replayed after a resume)
        run.lastSeq = frame.seq;
      }
    } else if (frame.run_id !== undefined && !run) {
      return; // a frame of a run that has already ended
    }
    this.emit("frame", frame);
    const data = frame.data || {};
    switch (frame.type) {
      case "status":
        this.emit("status", { message: data.message });
        break;
      case "flow_started":
        if (run) run.started = true;
        break;
      case "element_started":
      case "element_completed":
      case "element_error":
        this.emit("element", {
          phase: frame.type.slice("element_".length),
          element_id: data.element_id,
          element_name: data.element_name,
          element_type: data.element_type,
          backtracking: data.backtracking === true,
          error: data.error,
          outputs: data.outputs,
        });
        break;
      case "llm_chunk":
        if (typeof data.content === "string") this.emit("chunk", { content: data.content, element_id: data.element_id });
        break;
      case "final_output":
        if (typeof data.text_output === "string") this.emit("final", { text: data.text_output });
        break;
      case "flow_error":
        this.emit("error", { code: data.code, error: data.error, message: describeError(data), details: data.details, fatal: false });
        this.endRun(frame.type, data);
        break;
      case "flow_completed":
      case "flow_cancelled":
        this.endRun(frame.type, data);
        break;
      case "error":
        this.emit("error", { code: data.code, error: data.error, message: describeError(data), details: data.details, fatal: false });
        // An error before the flow started ends the run; later ones (e.g. a refused frame) do not.
        if (run && !run.started) this.endRun("error", data);
        break;
      default:
        break; // unknown event types are relayed untouched: nothing to do
    }
  }

  endRun(type, data) {
    const run = this.current;
    if (!run) return;
    this.current = null;
    this.emit("end", { type, run_id: run.id, data });
  }

  onClose(socket, event) {
    if (socket !== this.socket) return;
    this.socket = null;
    clearTimeout(this.stableTimer);
    if (this.stopped) return;
    const code = event.code;
    const reason = event.reason || CLOSE_REASONS[code] || `Closed with code ${code}.`;
    if (FATAL_CLOSE.has(code)) {
      const errorCode = CLOSE_CODE_ERRORS[code] || "invalid_request";
      // The gateway usually explained itself in an error frame just before: keep that sentence.
      const message = this.lastError && this.lastError.code === errorCode ? this.lastError.message : CLOSE_REASONS[code] || reason;
      this.emit("error", { code: errorCode, error: reason, message, fatal: true });
      this.endRun("disconnected", { code, reason });
      this.setState("error", { code, reason });
      return;
    }
    const run = this.current;
    if (run && run.sent && run.id === null) {
      // The gateway never named the run, so it cannot be resumed; sending again could run it twice.
      this.emit("error", { code: "connection_lost", error: reason, message: ERROR_MESSAGES.connection_lost, fatal: false });
      this.endRun("disconnected", { code, reason });
    }
    if (!event.wasClean || code !== 1000 || this.current) this.failures += 1;
    if (this.failures === this.failuresBeforeError) {
      this.emit("error", { code: "connection_failed", error: reason, message: ERROR_MESSAGES.connection_failed, fatal: false });
    }
    const delay = Math.min(this.initialDelay * 2 ** this.attempt, this.maxDelay);
    this.attempt += 1;
    this.setState("connecting", { retryIn: delay, code, reason });
    this.retryTimer = setTimeout(() => this.open(), delay);
  }
}
