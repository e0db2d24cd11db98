// Unit tests of static/flowgate-client.js with a scripted in-memory WebSocket and mocked timers:
// the token transport, run/cancel frames, de-duplication after a resume, the backoff sequence and
// the readable errors. Needs no gateway and no browser: `node --test client.test.mjs`.

import { beforeEach, test } from "node:test";
import assert from "node:assert/strict";
import { FlowgateClient, describeError, executeUrl } from "../../static/flowgate-client.js";

class FakeSocket {
  static all = [];
  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.readyState = 0;
    this.sent = [];
    FakeSocket.all.push(this);
  }
  send(text) {
    this.sent.push(JSON.parse(text));
  }
  close() {
    this.readyState = 3;
  }
  // ---- driven by the test
  accept() {
    this.readyState = 1;
    this.onopen?.({});
  }
  frame(obj) {
    this.onmessage?.({ data: JSON.stringify(obj) });
  }
  drop(code = 1006, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason, wasClean: code !== 1006 });
  }
}

const last = () => FakeSocket.all[FakeSocket.all.length - 1];
const RUN = "7c0e7a36-0000-4000-8000-000000000001";

function client() {
  const c = new FlowgateClient({ agentId: "assistant", token: "jwt.part.sig", baseUrl: "http://gw.test", WebSocket: FakeSocket });
  const seen = { text: "", ends: [], errors: [], states: [], elements: [] };
  c.addEventListener("chunk", (e) => { seen.text += e.detail.content; });
  c.addEventListener("end", (e) => seen.ends.push(e.detail));
  c.addEventListener("error", (e) => seen.errors.push(e.detail));
  c.addEventListener("state", (e) => seen.states.push(e.detail));
  c.addEventListener("element", (e) => seen.elements.push(e.detail));
  return { c, seen };
}

let seq = 0;
const ev = (type, data = {}) => ({ type, timestamp: 1, data, run_id: RUN, seq: ++seq });

beforeEach(() => {
  FakeSocket.all = [];
  seq = 0;
});

test("connects with the bearer subprotocol, never a token in the URL", () => {
  const { c } = client();
  c.connect();
  assert.equal(last().url, "ws://gw.test/api/chat/execute/assistant");
  assert.deepEqual(last().protocols, ["bearer", "jwt.part.sig"]);
  assert.equal(executeUrl("https://chat.example/app/", "a b"), "wss://chat.example/app/api/chat/execute/a%20b");
  c.close();
});

test("a run streams chunks, reports elements and ends exactly once", () => {
  const { c, seen } = client();
  c.run("hi", [{ role: "user", content: "before" }]);
  const ws = last();
  ws.accept();
  assert.deepEqual(ws.sent, [{ message: "hi", conversation_history: [{ role: "user", content: "before" }] }]);
  ws.frame(ev("status", { message: "Retrieving workflow..." }));
  ws.frame(ev("flow_started"));
  ws.frame(ev("element_started", { element_id: "llm_1", element_name: "Assistant", element_type: "llm_text", backtracking: true }));
  ws.frame(ev("llm_chunk", { content: "Hel" }));
  ws.frame(ev("llm_chunk", { content: "lo" }));
  ws.frame(ev("element_completed", { element_id: "llm_1" }));
  ws.frame(ev("flow_completed"));
  ws.frame(ev("flow_completed")); // a stray second terminal is not a second end
  assert.equal(seen.text, "Hello");
  assert.deepEqual(seen.ends.map((e) => e.type), ["flow_completed"]);
  assert.equal(seen.ends[0].run_id, RUN);
  assert.deepEqual(seen.elements.map((e) => [e.phase, e.backtracking]), [["started", true], ["completed", false]]);
  assert.equal(c.busy, false);
  c.close();
});

test("after a drop the run resumes from the last seq without duplicating text", (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const { c, seen } = client();
  c.run("hi");
  const first = last();
  first.accept();
  first.frame(ev("flow_started"));
  first.frame(ev("llm_chunk", { content: "Hel" }));
  first.frame(ev("llm_chunk", { content: "lo" })); // seq 3
  first.drop(1006);
  assert.equal(seen.states.at(-1).state, "connecting");
  assert.equal(seen.states.at(-1).retryIn, 1000);
  t.mock.timers.tick(1000);
  const second = last();
  assert.notEqual(second, first);
  second.accept();
  assert.deepEqual(second.sent, [{ type: "resume", run_id: RUN, after_seq: 3 }]);
  // The gateway replays from its buffer, overlapping what the client already has.
  seq = 1;
  second.frame(ev("llm_chunk", { content: "lo" })); // seq 2 again
  second.frame(ev("llm_chunk", { content: "lo" })); // seq 3 again
  second.frame(ev("llm_chunk", { content: " world" }));
  second.frame(ev("flow_completed"));
  assert.equal(seen.text, "Hello world");
  assert.equal(seen.ends.length, 1);
  assert.deepEqual(seen.errors, []);
});

test("reconnect delays double from 1 s up to 30 s", (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const { c, seen } = client();
  c.connect();
  const delays = [];
  for (let i = 0; i < 7; i++) {
    last().drop(1006);
    delays.push(seen.states.at(-1).retryIn);
    t.mock.timers.tick(seen.states.at(-1).retryIn);
  }
  assert.deepEqual(delays, [1000, 2000, 4000, 8000, 16000, 30000, 30000]);
  assert.equal(seen.errors.filter((e) => e.code === "connection_failed").length, 1, "told once, not every retry");
});

test("an unknown agent is a readable, final error", (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const { c, seen } = client();
  c.run("hello");
  const ws = last();
  ws.accept();
  ws.frame({ type: "error", data: { error: "agent `nope` not found", code: "agent_not_found" }, run_id: RUN, seq: 1 });
  ws.drop(4404, "agent not found");
  assert.match(seen.errors[0].message, /There is no agent with this id/);
  assert.match(seen.errors[0].message, /agent `nope` not found/);
  assert.deepEqual(seen.ends.map((e) => e.type), ["error"]);
  assert.equal(seen.states.at(-1).state, "error");
  t.mock.timers.tick(60_000);
  assert.equal(FakeSocket.all.length, 1, "no reconnect after 4404");
});

test("cancel is sent, and sent again after a reconnect", (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const { c, seen } = client();
  c.run("long");
  const first = last();
  first.accept();
  first.frame(ev("flow_started"));
  c.cancel();
  assert.deepEqual(first.sent.at(-1), { type: "cancel" });
  first.drop(1012, "restart");
  t.mock.timers.tick(1000);
  last().accept();
  assert.deepEqual(last().sent, [{ type: "resume", run_id: RUN, after_seq: 1 }, { type: "cancel" }]);
  last().frame(ev("flow_cancelled"));
  assert.deepEqual(seen.ends.map((e) => e.type), ["flow_cancelled"]);
});

test("a drop before the gateway named the run is reported, not silently re-run", (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const { c, seen } = client();
  c.run("hi");
  last().accept();
  last().drop(1006);
  assert.equal(seen.errors[0].code, "connection_lost");
  assert.deepEqual(seen.ends.map((e) => e.type), ["disconnected"]);
  t.mock.timers.tick(1000);
  last().accept();
  assert.deepEqual(last().sent, [], "the run request is not sent twice");
});

test("every error code of the protocol has its own sentence", () => {
  const codes = ["unauthenticated", "forbidden", "agent_not_found", "workflow_not_found", "invalid_workflow",
    "invalid_request", "store_unavailable", "engine_unavailable", "engine_timeout", "engine_lost",
    "engine_protocol_error", "too_many_runs", "internal"];
  const sentences = codes.map((code) => describeError({ code, error: "" }));
  assert.equal(new Set(sentences).size, codes.length);
  for (const s of sentences) assert.ok(s.endsWith(".") && s !== "Unknown error.", s);
  assert.equal(describeError({ error: "raw text" }), "raw text");
});
