// The `agui` dialect (AG-UI over SSE) against @ag-ui/client's HttpAgent. `runAgent` sends every
// event through the client's schemas (unknown or malformed events) and its verifier (event
// order: RUN_STARTED first, messages and steps opened before they are continued or closed,
// nothing after RUN_FINISHED/RUN_ERROR); the first check below proves the verifier is on in
// this version, so any slip of the gateway fails a run here.
//
//   FLOWGATE_URL=http://127.0.0.1:8000 FLOWGATE_TOKEN=<jwt> node --experimental-websocket agui.mjs

import { randomUUID } from "node:crypto";
import { HttpAgent } from "@ag-ui/client";
import { AUTH, BASE, QUESTION, check, checkEqual, native, nativeTerminal, within } from "./common.mjs";

let unhandled = null;
process.on("unhandledRejection", (e) => {
  unhandled = e;
});

const user = (content) => ({ id: randomUUID(), role: "user", content });
const agentFor = (agentId, messages, headers = AUTH) =>
  new HttpAgent({ url: `${BASE}/agui/${agentId}`, headers, threadId: `t-${randomUUID()}`, initialMessages: messages });
const textOf = (messages) =>
  messages
    .filter((m) => m.role === "assistant")
    .map((m) => m.content)
    .join("");

/** Run `agent`, recording every event the client accepted; `onEvent` may act mid-run. */
async function run(agent, onEvent, params = {}) {
  const events = [];
  const runId = `r-${randomUUID()}`;
  let result;
  let threw = null;
  try {
    result = await within(
      30000,
      agent.runAgent(
        { ...params, runId },
        {
          onEvent: ({ event }) => {
            events.push(event);
            if (onEvent) onEvent(event, events);
          },
        },
      ),
      "runAgent",
    );
  } catch (e) {
    threw = e;
  }
  return { events, result, threw, runId, types: events.map((e) => e.type) };
}

// The verifier is on: a stream that does not open with RUN_STARTED is refused by the client.
{
  const fake = async () =>
    new Response(`data: ${JSON.stringify({ type: "TEXT_MESSAGE_CONTENT", messageId: "m", delta: "x" })}\n\n`, {
      headers: { "content-type": "text/event-stream" },
    });
  const agent = new HttpAgent({ url: "http://127.0.0.1:9/never", fetch: fake, initialMessages: [user("hi")] });
  const quiet = console.error;
  console.error = () => {};
  const r = await run(agent);
  console.error = quiet;
  check(/RUN_STARTED/.test(String(r.threw?.message)), `the client's event verifier is on (${r.threw?.message})`);
}

const ref = await native("assistant", QUESTION);
check(ref.end.type === "flow_completed" && ref.text, "the native path answers");

// A whole run.
{
  const agent = agentFor("assistant", [user(QUESTION)]);
  const { events, result, threw, runId, types } = await run(agent);
  check(!threw, `runAgent resolves: every event passed the schemas and the verifier${threw ? ` (${threw.message})` : ""}`);
  check(types[0] === "RUN_STARTED" && types.at(-1) === "RUN_FINISHED", `RUN_STARTED first, RUN_FINISHED last (${types[0]} … ${types.at(-1)})`);
  const started = events[0];
  check(started.threadId === agent.threadId && started.runId === runId, "RUN_STARTED echoes the client's threadId and runId");
  check(started.metadata?.flowgate?.run_id, "flowgate's run_id is in metadata");
  checkEqual(textOf(result.newMessages), ref.text, "the new assistant message's text is the native path's answer");
  check(result.newMessages.length === 1 && result.newMessages[0].role === "assistant", "one new message, the assistant's");
  checkEqual(result.result, { text: ref.text }, "RUN_FINISHED's result is {text}");
  check(types.filter((t) => t === "TEXT_MESSAGE_CONTENT").length >= 2, "the answer comes in several TEXT_MESSAGE_CONTENT events");
  const steps = events.filter((e) => e.type === "STEP_STARTED").map((e) => e.stepName);
  check(steps.length >= 3 && new Set(steps).size === steps.length, `one step per element, named by element id (${steps.join(", ")})`);
  check(events.every((e) => Number.isInteger(e.timestamp)), "timestamps are integer milliseconds");

  // The next turn on the same agent: the earlier messages are the history.
  agent.addMessage(user("And then?"));
  const ref2 = await native("assistant", "And then?", [
    { role: "user", content: QUESTION },
    { role: "assistant", content: ref.text },
  ]);
  // Frontends register their tools and context routinely: accepted (unused in v1).
  const tools = [{ name: "show_chart", description: "Show a chart", parameters: { type: "object", properties: {} } }];
  const next = await run(agent, undefined, { tools, context: [{ description: "page", value: "home" }] });
  check(!next.threw, `turn 2 (with tools and context): runAgent resolves${next.threw ? ` (${next.threw.message})` : ""}`);
  checkEqual(textOf(next.result.newMessages), ref2.text, "turn 2: the earlier messages are the history");
}

// Failures before the run are HTTP errors; the client raises `HTTP <status>: <body>`.
for (const [what, agent, status] of [
  ["a bad token", agentFor("assistant", [user(QUESTION)], { Authorization: "Bearer not-a-token" }), 401],
  ["agent nope", agentFor("nope", [user(QUESTION)]), 404],
]) {
  const quiet = console.error;
  console.error = () => {};
  const r = await run(agent);
  console.error = quiet;
  check(String(r.threw?.message).startsWith(`HTTP ${status}`), `${what}: runAgent rejects with HTTP ${status} (${String(r.threw?.message).slice(0, 100)})`);
}

// A run that fails after it started ends with RUN_ERROR.
{
  const failing = await native("failing", QUESTION);
  check(failing.end.type === "flow_error" && failing.text, "native: `failing` streams, then flow_error");
  const agent = agentFor("failing", [user(QUESTION)]);
  let errorEvent;
  const quiet = console.error;
  console.error = () => {};
  const r = await run(agent, (e) => {
    if (e.type === "RUN_ERROR") errorEvent = e;
  });
  console.error = quiet;
  check(r.types[0] === "RUN_STARTED" && r.types.at(-1) === "RUN_ERROR", `the run ends with RUN_ERROR (${r.types.at(-1)})`);
  check(errorEvent?.code === "flow_error" && errorEvent.message, `RUN_ERROR {code: flow_error, message} (${errorEvent?.code}: ${errorEvent?.message})`);
  check(!r.threw, `runAgent resolves: the verifier accepts the failed run${r.threw ? ` (${r.threw.message})` : ""}`);
  const streamed = r.events.filter((e) => e.type === "TEXT_MESSAGE_CONTENT").map((e) => e.delta).join("");
  checkEqual(streamed, failing.text, "the text before the failure is what was streamed");
}

// abortRun() mid-stream: the run ends without an unhandled error.
{
  const slow = await native("slow", QUESTION);
  const agent = agentFor("slow", [user(QUESTION)]);
  let aborted = false;
  const quiet = console.error;
  let logged = [];
  console.error = (...a) => logged.push(a.join(" "));
  const r = await run(agent, (e, events) => {
    if (!aborted && events.filter((x) => x.type === "TEXT_MESSAGE_CONTENT").length === 3) {
      aborted = true;
      agent.abortRun();
    }
  });
  console.error = quiet;
  check(aborted, "abortRun() was called mid-stream");
  check(!r.threw, `runAgent settles without an error after abortRun()${r.threw ? ` (${r.threw.message})` : ""}${logged.length ? ` [${logged}]` : ""}`);
  check(!r.types.includes("RUN_FINISHED"), "no RUN_FINISHED after the abort");
  const text = r.events.filter((e) => e.type === "TEXT_MESSAGE_CONTENT").map((e) => e.delta).join("");
  check(text.length > 0 && slow.text.startsWith(text) && text.length < slow.text.length, "the run stopped part way");
  // No resume in AG-UI: the abort cancels the run on the gateway (seen on the native path).
  const end = await nativeTerminal(r.events[0].metadata.flowgate.run_id);
  check(end.type === "flow_cancelled", `the aborted run was cancelled on the gateway (${end.type}: ${end.data?.reason})`);
}

await new Promise((r) => setTimeout(r, 50));
check(unhandled === null, `no unhandled rejection${unhandled ? ` (${unhandled})` : ""}`);
console.log("all agui client checks passed");
