// Browser tests of the WebSocket dialects (docs/dialects.md) in headless Chromium, with the
// page's own `WebSocket` (the original frontends are browser apps), against `flowgate demo`
// (every dialect on, agent `assistant`): connect, send, stream, a clean close (never 1006), a
// refused token that does not make a reconnecting client loop, and the pacing of a turn's end.
//
//   FLOWGATE_URL=http://127.0.0.1:8000 FLOWGATE_TOKEN=<jwt> npm test   (tests/browser/run.sh does it)

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const BASE = (process.env.FLOWGATE_URL || "").replace(/\/+$/, "");
const TOKEN = process.env.FLOWGATE_TOKEN || "";
const SKIP = !BASE || !TOKEN ? "set FLOWGATE_URL and FLOWGATE_TOKEN to run the browser tests" : false;
if (SKIP && process.env.FLOWGATE_BROWSER_REQUIRED) {
  throw new Error("FLOWGATE_BROWSER_REQUIRED is set but FLOWGATE_URL/FLOWGATE_TOKEN are missing");
}
const WS = BASE.replace(/^http/, "ws");

let browser;
let page;

before(async () => {
  if (SKIP) return;
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
  });
  page = await (await browser.newContext()).newPage();
  await page.goto(`${BASE}/`);
});

after(async () => {
  if (browser) await browser.close();
});

/**
 * In the page: open `url`, send `first` (JSON) once open (or `sendAfter` the first frame), read
 * frames until `isEnd(frame)` holds, then close with 1000 and wait for the close event. Returns
 * the frames with their arrival times and how the socket closed.
 */
async function turn(url, first, isEnd, { sendAfterFirstFrame = false } = {}) {
  return page.evaluate(
    async ({ url, first, isEnd, sendAfterFirstFrame }) => {
      const end = new Function("f", `return (${isEnd})(f)`);
      const frames = [];
      const ws = new WebSocket(url);
      const closed = new Promise((resolve) => {
        ws.onclose = (e) => resolve({ code: e.code, reason: e.reason, wasClean: e.wasClean });
      });
      let sent = false;
      const send = (f) => {
        if (!sent) {
          sent = true;
          ws.send(JSON.stringify(typeof f === "function" ? f(frames) : f));
        }
      };
      const done = new Promise((resolve) => {
        ws.onmessage = (m) => {
          const f = JSON.parse(m.data);
          frames.push({ at: performance.now(), f });
          if (sendAfterFirstFrame) send(first);
          if (end(f)) resolve();
        };
      });
      ws.onopen = () => {
        if (!sendAfterFirstFrame) send(first);
      };
      const timeout = new Promise((_, reject) => setTimeout(() => reject(new Error(`no end within 20 s: ${JSON.stringify(frames)}`)), 20000));
      await Promise.race([Promise.race([done, closed]), timeout]);
      if (ws.readyState === WebSocket.OPEN) ws.close(1000, "bye");
      const close = await Promise.race([closed, timeout]);
      return { frames, close };
    },
    { url, first, isEnd: isEnd.toString(), sendAfterFirstFrame },
  );
}

/** In the page: open `url` and report the frames and the close (a refused socket). */
async function refused(url) {
  return page.evaluate(async (url) => {
    const frames = [];
    const ws = new WebSocket(url);
    ws.onmessage = (m) => frames.push(JSON.parse(m.data));
    const close = await new Promise((resolve) => {
      ws.onclose = (e) => resolve({ code: e.code, reason: e.reason, wasClean: e.wasClean });
    });
    return { frames, close };
  }, url);
}

const cleanly = (close) => {
  assert.equal(close.code, 1000, JSON.stringify(close));
  assert.equal(close.wasClean, true, "a clean close, never 1006");
};

test("omni2: tokens then done, clean close; a refused token is the error frame then 4401", { skip: SKIP }, async () => {
  const { frames, close } = await turn(`${WS}/ws/chat?token=${TOKEN}`, { type: "message", text: "Hello" }, (f) => f.type === "done" || f.type === "error");
  const types = frames.map((x) => x.f.type);
  assert.equal(types.at(-1), "done", types.join());
  assert.ok(types.filter((t) => t === "token").length >= 2, types.join());
  cleanly(close);
  const r = await refused(`${WS}/ws/chat?token=not-a-token`);
  assert.equal(r.frames[0].code, "unauthenticated");
  assert.equal(r.close.code, 4401);
  assert.equal(r.close.wasClean, true);
});

test("copilot: stream_* frames, the end paced after the last token, clean close", { skip: SKIP }, async () => {
  const first = { action: "message", message: "Hello", conversationId: null, streaming: true };
  const { frames, close } = await turn(`${WS}/copilot?userId=x&token=${TOKEN}`, first, (f) => ["stream_complete", "stream_interrupted", "error"].includes(f.type));
  const types = frames.map((x) => x.f.type);
  assert.deepEqual(types.slice(0, 2), ["typing", "stream_start"]);
  assert.equal(types.at(-1), "stream_complete");
  const gap = frames.at(-1).at - frames.at(-2).at;
  assert.ok(gap >= 15, `stream_complete ${gap.toFixed(1)} ms after the last token: not one burst`);
  cleanly(close);
});

test("citizen: a minted session, one flat frame per turn, clean close; an unknown session is 4401", { skip: SKIP }, async () => {
  const session = await page.evaluate(async () => (await fetch("/api/agent/session", { method: "POST" })).json());
  assert.match(session.sessionId, /^[0-9a-f]{32}$/);
  const url = `${session.websocketUrl}?sessionId=${session.sessionId}`;
  const { frames, close } = await turn(url, { sessionId: session.sessionId, message: "Hello" }, (f) => f.done === true);
  assert.equal(frames[0].f.type, "connected");
  const answers = frames.slice(1);
  assert.equal(answers.length, 1, "one frame per turn");
  assert.ok(answers[0].f.delta.length > 0);
  cleanly(close);
  const r = await refused(`${WS}/?sessionId=00000000000000000000000000000000`);
  assert.equal(r.frames[0].code, "unauthenticated");
  assert.equal(r.close.code, 4401);
});

test("adk: partials then one full-text terminal, clean close; a refused token closes with 1000 so barka stops", { skip: SKIP }, async () => {
  const { frames, close } = await turn(`${WS}/ws/barka-client?token=${TOKEN}`, { mime_type: "text/plain", data: "Hello", role: "user" }, (f) => f.turn_complete === true);
  assert.equal(frames[0].f.type, "connection_established");
  const text = frames.slice(1);
  assert.ok(text.filter((x) => x.f.partial).length >= 2);
  assert.equal(text.at(-1).f.interrupted, false);
  cleanly(close);
  // barka reconnects on every code but 1000 (and resets its counter on open): count its attempts.
  const attempts = await page.evaluate(async (url) => {
    let n = 0;
    const once = () => new Promise((resolve) => {
      n += 1;
      const ws = new WebSocket(url);
      ws.onclose = (e) => resolve(e.code);
    });
    for (;;) {
      const code = await once();
      if (code === 1000 || n >= 5) return { n, code };
    }
  }, `${WS}/ws/barka-client?token=not-a-token`);
  assert.deepEqual(attempts, { n: 1, code: 1000 }, "one attempt, then barka stops");
});
