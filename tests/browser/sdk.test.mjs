// The SSE dialects from a real page in headless Chromium, with the real client libraries as a
// web app ships them: the AI SDK's `DefaultChatTransport` + `readUIMessageStream` (vercel) and
// @ag-ui/client's `HttpAgent` (agui), bundled for the browser by esbuild from node_modules (no
// network). The bundle runs in a document of the gateway's origin (no CORS); the answers are
// compared with the native WebSocket path run in the same page (`new WebSocket(url, ["bearer",
// token])`).
//
//   FLOWGATE_URL=http://127.0.0.1:8000 FLOWGATE_TOKEN=<jwt> npm test   (tests/browser/run.sh does it)

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import { chromium } from "playwright-core";

const BASE = (process.env.FLOWGATE_URL || "").replace(/\/+$/, "");
const TOKEN = process.env.FLOWGATE_TOKEN || "";
const SKIP = !BASE || !TOKEN ? "set FLOWGATE_URL and FLOWGATE_TOKEN to run the browser tests" : false;
if (SKIP && process.env.FLOWGATE_BROWSER_REQUIRED) {
  throw new Error("FLOWGATE_BROWSER_REQUIRED is set but FLOWGATE_URL/FLOWGATE_TOKEN are missing");
}
const QUESTION = "What is flowgate?";

let browser;
let page;
const problems = [];

before(async () => {
  if (SKIP) return;
  const bundle = await build({
    stdin: {
      contents: 'export { DefaultChatTransport, readUIMessageStream } from "ai"; export { HttpAgent } from "@ag-ui/client";',
      resolveDir: dirname(fileURLToPath(import.meta.url)),
      loader: "js",
    },
    bundle: true,
    format: "iife",
    globalName: "sdk",
    platform: "browser",
    target: "chrome110",
    minify: true,
    write: false,
    logLevel: "error",
  });
  const script = bundle.outputFiles[0].text;
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
  });
  page = await (await browser.newContext()).newPage();
  page.on("pageerror", (e) => problems.push(String(e)));
  // A document of the gateway's own origin, loaded from it (Chromium's local network access
  // checks refuse loopback connections from a page Playwright made up), without the chat page's
  // app and CSP: /healthz. The bundle goes in as a script of that page.
  await page.goto(`${BASE}/healthz`);
  await page.evaluate(() => {
    document.body.replaceChildren(Object.assign(document.createElement("p"), { id: "out" }));
  });
  await page.addScriptTag({ content: script });
  assert.equal(await page.evaluate(() => typeof window.sdk?.DefaultChatTransport), "function", "the bundle loaded");
});

after(async () => {
  if (browser) await browser.close();
});

/** In the page: the native path's streamed text for `agent` and `message`. */
const NATIVE = async ({ base, token, agent, message }) => {
  const ws = new WebSocket(`${base.replace(/^http/, "ws")}/api/chat/execute/${agent}`, ["bearer", token]);
  let text = "";
  await new Promise((resolve, reject) => {
    ws.onopen = () => ws.send(JSON.stringify({ type: "run", message }));
    ws.onmessage = (m) => {
      const f = JSON.parse(m.data);
      if (f.type === "llm_chunk") text += f.data.content;
      if (f.type === "flow_completed") resolve();
      if (["flow_error", "flow_cancelled", "error"].includes(f.type)) reject(new Error(JSON.stringify(f)));
    };
    ws.onclose = (e) => reject(new Error(`closed ${e.code}`));
  });
  ws.onclose = null;
  ws.close(1000);
  return text;
};

test("vercel: the AI SDK's DefaultChatTransport streams the answer into a UIMessage in the page", { skip: SKIP }, async () => {
  const got = await page.evaluate(
    async ({ base, token, question, native }) => {
      const nativeText = await new Function(`return (${native})`)()({ base, token, agent: "assistant", message: question });
      const transport = new window.sdk.DefaultChatTransport({
        api: `${base}/api/chat`,
        headers: { Authorization: `Bearer ${token}` },
        body: { agentId: "assistant" },
      });
      const chatId = crypto.randomUUID();
      const stream = await transport.sendMessages({
        chatId,
        trigger: "submit-message",
        messages: [{ id: crypto.randomUUID(), role: "user", parts: [{ type: "text", text: question }] }],
      });
      const errors = [];
      let message;
      let updates = 0;
      for await (const m of window.sdk.readUIMessageStream({ stream, onError: (e) => errors.push(String(e)) })) {
        message = m;
        updates++;
        document.getElementById("out").textContent = m.parts.filter((p) => p.type === "text").map((p) => p.text).join("");
      }
      const idle = await transport.reconnectToStream({ chatId });
      return {
        nativeText,
        text: message.parts.filter((p) => p.type === "text").map((p) => p.text).join(""),
        role: message.role,
        updates,
        errors,
        idle,
        shown: document.getElementById("out").textContent,
      };
    },
    { base: BASE, token: TOKEN, question: QUESTION, native: NATIVE.toString() },
  );
  assert.deepEqual(got.errors, []);
  assert.equal(got.role, "assistant");
  assert.ok(got.nativeText.length > 0);
  assert.equal(got.text, got.nativeText, "the UIMessage's text is the native path's answer");
  assert.equal(got.shown, got.nativeText, "the page shows the answer");
  assert.ok(got.updates > 2, `the message was updated as it streamed (${got.updates} snapshots)`);
  assert.equal(got.idle, null, "nothing to resume once the run ended");
  assert.deepEqual(problems, []);
});

test("agui: @ag-ui/client's HttpAgent runs the agent from the page", { skip: SKIP }, async () => {
  const got = await page.evaluate(
    async ({ base, token, question, native }) => {
      const nativeText = await new Function(`return (${native})`)()({ base, token, agent: "assistant", message: question });
      const agent = new window.sdk.HttpAgent({
        url: `${base}/agui/assistant`,
        headers: { Authorization: `Bearer ${token}` },
        initialMessages: [{ id: crypto.randomUUID(), role: "user", content: question }],
      });
      const types = [];
      const { newMessages, result } = await agent.runAgent(
        { runId: crypto.randomUUID() },
        { onEvent: ({ event }) => types.push(event.type) },
      );
      return { nativeText, newMessages, result, types };
    },
    { base: BASE, token: TOKEN, question: QUESTION, native: NATIVE.toString() },
  );
  assert.ok(got.nativeText.length > 0);
  assert.equal(got.types[0], "RUN_STARTED");
  assert.equal(got.types.at(-1), "RUN_FINISHED");
  assert.equal(got.newMessages.length, 1);
  assert.equal(got.newMessages[0].role, "assistant");
  assert.equal(got.newMessages[0].content, got.nativeText, "the new assistant message is the native path's answer");
  assert.deepEqual(got.result, { text: got.nativeText });
  assert.deepEqual(problems, []);
});
