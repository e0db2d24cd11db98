// The `vercel` dialect (AI SDK UI message stream, protocol v1) against the `ai` package's own
// transport: `DefaultChatTransport` (what `useChat` uses) posts to /api/chat and parses the
// stream with the SDK's part schemas; `readUIMessageStream` folds the parts into a UIMessage.
// Besides the SDK's parse, every part is held to DIALECTS 4.3's strict key lists.
//
//   FLOWGATE_URL=http://127.0.0.1:8000 FLOWGATE_TOKEN=<jwt> node --experimental-websocket vercel.mjs

import { randomUUID } from "node:crypto";
import { DefaultChatTransport, readUIMessageStream } from "ai";
import { AUTH, BASE, QUESTION, check, checkEqual, native, nativeTerminal, within } from "./common.mjs";

/** The keys each part may carry (DIALECTS 4.3, strictness traps). */
const ALLOWED = {
  start: ["messageId", "messageMetadata"],
  "start-step": [],
  "finish-step": [],
  "text-start": ["id", "providerMetadata"],
  "text-delta": ["id", "delta", "providerMetadata"],
  "text-end": ["id", "providerMetadata"],
  error: ["errorText"],
  finish: ["finishReason", "messageMetadata"],
  abort: ["reason"],
  "message-metadata": ["messageMetadata"],
};
const FINISH_REASONS = ["stop", "length", "content-filter", "tool-calls", "error", "other"];

function strict(part) {
  const allowed = part.type.startsWith("data-flowgate-") ? ["id", "data", "transient"] : ALLOWED[part.type];
  if (!allowed) return `unknown part type ${part.type}`;
  const extra = Object.keys(part).filter((k) => k !== "type" && !allowed.includes(k));
  if (extra.length) return `${part.type} has ${extra.join(", ")}`;
  const nulls = Object.keys(part).filter((k) => part[k] === null);
  if (nulls.length) return `${part.type} has null ${nulls.join(", ")}`;
  if (part.type === "finish" && part.finishReason !== undefined && !FINISH_REASONS.includes(part.finishReason)) return `finishReason ${part.finishReason}`;
  return null;
}

const transport = (agentId, headers = AUTH) => new DefaultChatTransport({ api: `${BASE}/api/chat`, headers, body: { agentId } });
const userMessage = (text) => ({ id: randomUUID(), role: "user", parts: [{ type: "text", text }] });
const textsOf = (message) => message.parts.filter((p) => p.type === "text").map((p) => p.text);

/**
 * Read a part stream the way a UI does (readUIMessageStream), keeping the raw parts too.
 * `onPart(part, parts)` may act mid-stream (abort, stop). Returns the last message snapshot, the
 * parts, the error texts and how the stream ended (`threw` holds what the read threw).
 */
async function fold(stream, onPart) {
  const parts = [];
  const errors = [];
  const tap = stream.pipeThrough(
    new TransformStream({
      async transform(part, controller) {
        parts.push(part);
        controller.enqueue(part);
        if (onPart) await onPart(part, parts);
      },
    }),
  );
  let message;
  let threw = null;
  try {
    for await (const m of readUIMessageStream({ stream: tap, onError: (e) => errors.push(e.message) })) message = m;
  } catch (e) {
    threw = e;
  }
  return { message, parts, errors, threw };
}

const checkStrict = (parts, what) => {
  const breaches = parts.map(strict).filter(Boolean);
  check(breaches.length === 0, `${what}: every part is a strict object of a known type${breaches.length ? ` (${breaches.slice(0, 3).join("; ")})` : ""}`);
};

async function stop(chatId) {
  return fetch(`${BASE}/api/chat/${encodeURIComponent(chatId)}/stop`, { method: "POST", headers: AUTH });
}

const ref = await native("assistant", QUESTION);
check(ref.end.type === "flow_completed" && ref.text, "the native path answers");

// Idle: nothing to resume.
const t = transport("assistant");
check((await t.reconnectToStream({ chatId: `idle-${randomUUID()}` })) === null, "reconnectToStream() of an idle chat is null (204)");

// A whole answer through the SDK's transport.
{
  const chatId = `chat-${randomUUID()}`;
  const stream = await t.sendMessages({ chatId, messages: [userMessage(QUESTION)], trigger: "submit-message" });
  const { message, parts, errors, threw } = await within(30000, fold(stream), "sendMessages");
  check(!threw && errors.length === 0, `the stream parses with the SDK's schemas${threw ? `: ${threw}` : ""}${errors.length ? `: ${errors}` : ""}`);
  checkStrict(parts, "sendMessages");
  check(message?.role === "assistant", "readUIMessageStream folds it into an assistant UIMessage");
  checkEqual(textsOf(message).join(""), ref.text, "the message's text is the native path's answer");
  checkEqual(textsOf(message), ref.blocks.map((b) => b.text), "one text part per LLM element");
  const types = parts.map((p) => p.type);
  check(types[0] === "start" && types.at(-1) === "finish", `start first, finish last (${types[0]} … ${types.at(-1)})`);
  const start = parts[0];
  const finish = parts.at(-1);
  check(message.id === start.messageId && /^msg-/.test(message.id), "the message id is the start part's msg-<run_id>");
  check(start.messageMetadata?.agent_id === "assistant" && start.messageMetadata?.run_id, "start carries run_id and agent_id in messageMetadata");
  check(finish.finishReason === "stop", "finish says stop");
  check(message.metadata?.run_id === start.messageMetadata.run_id, "the message's metadata keeps run_id");
  check(parts.filter((p) => p.type === "text-delta").length >= 2, "the answer comes in several text-delta parts");
  const data = parts.filter((p) => p.type.startsWith("data-"));
  check(data.length > 0 && data.every((p) => p.transient === true), "flowgate's element parts are transient data-flowgate-* parts");
  check(!message.parts.some((p) => p.type.startsWith("data-")), "transient parts stay out of the stored message");
  check((await t.reconnectToStream({ chatId })) === null, "reconnectToStream() after the run ended is null");

  // The next turn: the earlier messages are the history, as on the native path.
  const history = [userMessage(QUESTION), { ...message }, userMessage("And then?")];
  const ref2 = await native("assistant", "And then?", [
    { role: "user", content: QUESTION },
    { role: "assistant", content: ref.text },
  ]);
  const next = await within(30000, fold(await t.sendMessages({ chatId, messages: history, trigger: "submit-message" })), "turn 2");
  checkEqual(textsOf(next.message).join(""), ref2.text, "turn 2: the earlier UIMessages are the history");

  // Regenerate: the answer to the last user message again, in place of the given assistant one.
  const regenerated = await t.sendMessages({ chatId, messages: [history[0], { ...message }], trigger: "regenerate-message", messageId: message.id });
  const again = await within(30000, fold(regenerated), "regenerate");
  checkEqual(textsOf(again.message).join(""), ref.text, "regenerate-message answers the last user message again");
  check(again.message.id !== message.id, "the regenerated answer is a new message (a new run)");

  // A file part is refused before the stream: flowgate agents take text.
  const file = { id: randomUUID(), role: "user", parts: [{ type: "file", mediaType: "image/png", url: "data:image/png;base64,AA==" }] };
  try {
    await t.sendMessages({ chatId: `file-${randomUUID()}`, messages: [file], trigger: "submit-message" });
    check(false, "a file part is refused");
  } catch (e) {
    check(/^invalid_request: /.test(e.message), `a file part: sendMessages throws (${e.message.trim().slice(0, 100)})`);
  }
}

// Errors before the stream are HTTP errors; the transport throws the body, one sentence.
for (const [what, tr] of [
  ["a bad token", transport("assistant", { Authorization: "Bearer not-a-token" })],
  ["an unknown agentId", transport("nope")],
]) {
  try {
    await tr.sendMessages({ chatId: `e-${randomUUID()}`, messages: [userMessage(QUESTION)], trigger: "submit-message" });
    check(false, `${what} is refused`);
  } catch (e) {
    check(e instanceof Error && e.message.length > 0, `${what}: sendMessages throws (${e.message.trim().slice(0, 100)})`);
  }
}

// A run that fails after it started: an error part, then the stream ends.
{
  const failing = await native("failing", QUESTION);
  check(failing.end.type === "flow_error" && failing.text, "native: `failing` streams, then flow_error");
  const stream = await transport("failing").sendMessages({ chatId: `f-${randomUUID()}`, messages: [userMessage(QUESTION)], trigger: "submit-message" });
  const { message, parts, errors, threw } = await within(30000, fold(stream), "failing");
  checkStrict(parts, "failing");
  check(!threw, `the SDK reads the failed stream to its end${threw ? `: ${threw}` : ""}`);
  const last = parts.at(-1);
  check(last?.type === "error" && /^flow_error: /.test(last.errorText), `a failure after the start ends with an error part (${last?.type}: ${last?.errorText})`);
  check(errors.length === 1 && !parts.some((p) => p.type === "finish"), "the SDK reports the error once; no finish passes the cut answer off as whole");
  checkEqual(textsOf(message).join(""), failing.text, "the text before the failure is what was streamed");
}

// Resume after a dropped connection: abort the fetch mid-stream, then reconnectToStream()
// replays the whole message from its start and follows it live to its end.
const slow = await native("slow", QUESTION);
check(slow.end.type === "flow_completed" && slow.blocks.length > 2, "native: `slow` answers in several blocks");
{
  const chatId = `r-${randomUUID()}`;
  const tr = transport("slow");
  const abort = new AbortController();
  const stream = await tr.sendMessages({ chatId, messages: [userMessage(QUESTION)], trigger: "submit-message", abortSignal: abort.signal });
  const first = await within(
    30000,
    fold(stream, (p, parts) => {
      if (parts.filter((x) => x.type === "text-delta").length === 5) abort.abort();
    }),
    "abort",
  );
  const before = textsOf(first.message).join("");
  check(first.threw?.name === "AbortError" || abort.signal.aborted, "the fetch is aborted mid-stream");
  check(slow.text.startsWith(before) && before.length < slow.text.length, "the aborted message holds the start of the answer, not all of it");
  const again = await tr.reconnectToStream({ chatId });
  check(again !== null, "reconnectToStream() of the detached run is a stream (200)");
  const resumed = await within(30000, fold(again), "resume");
  check(!resumed.threw && resumed.errors.length === 0, `the resumed stream parses${resumed.threw ? `: ${resumed.threw}` : ""}`);
  checkStrict(resumed.parts, "resume");
  check(resumed.parts[0]?.type === "start" && resumed.parts[0].messageId === first.parts[0].messageId, "the replay starts from the run's first part, same messageId");
  check(resumed.parts.at(-1)?.type === "finish", "the resumed stream ends with finish");
  checkEqual(textsOf(resumed.message), slow.blocks.map((b) => b.text), "the resumed message is the whole answer");
  check((await tr.reconnectToStream({ chatId })) === null, "after the end, reconnectToStream() is null again");
  const end = await nativeTerminal(first.parts[0].messageMetadata.run_id);
  check(end.type === "flow_completed", `a dropped connection only detached the run: it completed (${end.type})`);
}

// Stop: POST /api/chat/{chatId}/stop really stops the run; the stream ends with an abort part.
{
  const chatId = `s-${randomUUID()}`;
  const tr = transport("slow");
  const stream = await tr.sendMessages({ chatId, messages: [userMessage(QUESTION)], trigger: "submit-message" });
  let busy;
  let stopped;
  const { message, parts, errors, threw } = await within(
    30000,
    fold(stream, async (p, parts) => {
      if (parts.filter((x) => x.type === "text-delta").length === 3 && !stopped) {
        busy = await fetch(`${BASE}/api/chat`, {
          method: "POST",
          headers: { ...AUTH, "content-type": "application/json" },
          body: JSON.stringify({ id: chatId, messages: [userMessage(QUESTION)], trigger: "submit-message", agentId: "slow" }),
        });
        stopped = await stop(chatId);
      }
    }),
    "stop",
  );
  check(busy?.status === 409, `a second message while the chat runs is refused: 409 (${busy?.status})`);
  check(stopped?.status === 204, `POST /api/chat/{chatId}/stop: 204 (${stopped?.status})`);
  check(!threw && errors.length === 0, `the stopped stream ends cleanly${threw ? `: ${threw}` : ""}`);
  checkStrict(parts, "stop");
  const last = parts.at(-1);
  check(last?.type === "abort" && !parts.some((p) => p.type === "finish"), `the stream ends with an abort part (${last?.type} ${JSON.stringify(last)})`);
  const text = textsOf(message).join("");
  check(text.length > 0 && slow.text.startsWith(text) && text.length < slow.text.length, "the stopped message holds the part of the answer streamed before the stop");
  check((await tr.reconnectToStream({ chatId })) === null, "a stopped chat has nothing to resume");
  const end = await nativeTerminal(parts[0].messageMetadata.run_id);
  check(end.type === "flow_cancelled", `the stop cancelled the run on the gateway (${end.type}: ${end.data?.reason})`);
}

console.log("all vercel client checks passed");
