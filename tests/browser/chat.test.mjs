// Browser tests of the chat page (headless Chromium through playwright-core) against a running
// gateway: FLOWGATE_URL (e.g. http://127.0.0.1:8000) and FLOWGATE_TOKEN (a JWT for `alice`).
// Without them every test is skipped. Screenshots go to tests/output/.
//
//   cd tests/browser && npm ci && FLOWGATE_URL=... FLOWGATE_TOKEN=... npm test
//
// CHROMIUM_PATH overrides the browser (default /usr/bin/chromium, Debian's `chromium` package).

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const BASE = (process.env.FLOWGATE_URL || "").replace(/\/+$/, "");
const TOKEN = process.env.FLOWGATE_TOKEN || "";
const SKIP = !BASE || !TOKEN ? "set FLOWGATE_URL and FLOWGATE_TOKEN to run the browser tests" : false;
if (SKIP && process.env.FLOWGATE_BROWSER_REQUIRED) {
  throw new Error("FLOWGATE_BROWSER_REQUIRED is set but FLOWGATE_URL/FLOWGATE_TOKEN are missing");
}
const OUTPUT = join(dirname(fileURLToPath(import.meta.url)), "..", "output");
const WAIT = 20_000;

let browser;

before(async () => {
  if (SKIP) return;
  mkdirSync(OUTPUT, { recursive: true });
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
    ],
  });
});

after(async () => {
  if (browser) await browser.close();
});

/** Open the page for `agent` with the token in the fragment (after `setup`, e.g. routes); collects
 * console problems. */
async function open(agent, setup = async () => {}) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 760 } });
  const page = await context.newPage();
  const problems = [];
  page.on("console", (m) => {
    if (m.type() === "error" && /Content.Security.Policy|Refused to/i.test(m.text())) problems.push(m.text());
  });
  page.on("pageerror", (e) => problems.push(String(e)));
  await setup(page);
  await page.goto(`${BASE}/?agent=${encodeURIComponent(agent)}#token=${TOKEN}`);
  return { page, context, problems };
}

async function send(page, text) {
  await page.locator("#input").fill(text);
  await page.locator("#send").click();
}

const lastAnswer = (page) => page.locator(".message.assistant").last();

test("a chat with `assistant` streams the answer into the page", { skip: SKIP }, async () => {
  const { page, context, problems } = await open("assistant");
  try {
    await page.locator('#connection[data-state="connected"]').waitFor({ timeout: WAIT });
    assert.ok(!page.url().includes("token="), "the token is removed from the address bar");
    const stored = await page.evaluate(() => sessionStorage.getItem("flowgate.token"));
    assert.equal(stored, TOKEN, "the token is kept in sessionStorage");

    await send(page, "Tell me about flowgate");
    const body = lastAnswer(page).locator(".body");
    // Streaming: some text is visible while the run is still going.
    await page.waitForFunction(
      () => document.body.dataset.run === "running" &&
        document.querySelector(".message.assistant:last-child .body")?.textContent.length > 0,
      null,
      { timeout: WAIT },
    );
    const partial = await body.textContent();
    await page.locator('body[data-run="idle"]').waitFor({ timeout: WAIT });
    const full = await body.textContent();
    assert.equal(await lastAnswer(page).getAttribute("data-end"), "flow_completed");
    assert.ok(full.length > partial.length, `text grew while streaming: ${JSON.stringify(partial)} → ${JSON.stringify(full)}`);
    assert.ok(full.startsWith(partial), "streamed text is not rewritten or duplicated");
    assert.ok((await page.locator("#timeline .step").count()) >= 2, "the timeline shows the elements");
    assert.equal(await page.locator('#timeline .step[data-state="running"]').count(), 0, "every element finished");
    assert.ok(await page.locator("#error").isHidden(), "no error shown");
    await page.screenshot({ path: join(OUTPUT, "chat-streamed.png"), fullPage: true });
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
  }
});

test("Stop cancels the run in progress", { skip: SKIP }, async () => {
  const { page, context, problems } = await open("assistant");
  try {
    await page.locator('#connection[data-state="connected"]').waitFor({ timeout: WAIT });
    await send(page, "A long answer, please");
    await page.waitForFunction(
      () => document.querySelector(".message.assistant:last-child .body")?.textContent.length > 0,
      null,
      { timeout: WAIT },
    );
    await page.locator("#stop").click();
    await page.locator('body[data-run="idle"]').waitFor({ timeout: WAIT });
    assert.equal(await lastAnswer(page).getAttribute("data-end"), "flow_cancelled");
    assert.match(await lastAnswer(page).textContent(), /stopped/);
    assert.ok(await page.locator("#stop").isDisabled());
    assert.ok(await page.locator("#send").isEnabled(), "a new message can be sent");
    await page.screenshot({ path: join(OUTPUT, "chat-stopped.png"), fullPage: true });
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
  }
});

/** Run `message` on a fresh page and return the final answer text. */
async function answerOf(message, setup = async () => {}) {
  const { page, context, problems } = await open("assistant", setup);
  try {
    await page.locator('#connection[data-state="connected"]').waitFor({ timeout: WAIT });
    await send(page, message);
    await page.locator('body[data-run="idle"]').waitFor({ timeout: WAIT * 2 });
    assert.equal(await lastAnswer(page).getAttribute("data-end"), "flow_completed");
    assert.deepEqual(problems, []);
    return { text: await lastAnswer(page).locator(".body").textContent(), page, context };
  } catch (e) {
    await context.close();
    throw e;
  }
}

test("a dropped connection reconnects and resumes without losing or repeating text", { skip: SKIP }, async () => {
  const message = "Resume test: say something long";
  const plain = await answerOf(message);
  await plain.context.close();

  let connections = 0;
  let dropped = false;
  const resumed = await answerOf(message, (page) =>
    page.routeWebSocket(/\/api\/chat\/execute\//, (ws) => {
      connections += 1;
      const server = ws.connectToServer();
      let chunks = 0;
      server.onMessage((frame) => {
        if (dropped && connections === 1) return;
        ws.send(frame);
        if (connections === 1 && JSON.parse(frame).type === "llm_chunk" && ++chunks === 3) {
          // The network goes away in the middle of the answer.
          dropped = true;
          server.close();
          ws.close({ code: 1012, reason: "test: connection dropped" });
        }
      });
    }),
  );
  try {
    assert.ok(dropped, "the connection was dropped mid-answer");
    assert.equal(connections, 2, "one reconnect");
    assert.equal(resumed.text, plain.text);
    await resumed.page.screenshot({ path: join(OUTPUT, "chat-resumed.png"), fullPage: true });
  } finally {
    await resumed.context.close();
  }
});

test("an unknown agent shows a readable error", { skip: SKIP }, async () => {
  const { page, context, problems } = await open("no-such-agent");
  try {
    const error = page.locator("#error");
    // The gateway may refuse at connect time or on the first run request.
    await page.waitForFunction(() => document.getElementById("connection").dataset.state !== "disconnected", null, { timeout: WAIT });
    if (await error.isHidden()) {
      await page.waitForTimeout(500);
      if (await error.isHidden()) await send(page, "hello?");
    }
    await error.waitFor({ state: "visible", timeout: WAIT });
    assert.match(await error.textContent(), /no agent with this id/i);
    await page.screenshot({ path: join(OUTPUT, "chat-unknown-agent.png"), fullPage: true });
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
  }
});

test("a browser that closes right after flow_completed (as the NeuraLabs frontend does) gets a clean close", { skip: SKIP }, async () => {
  const { page, context } = await open("echo");
  try {
    // A raw WebSocket, as the NeuraLabs React frontend uses it: `?token=` (compat), one run,
    // `ws.close()` on the terminal event; then the same mid-run and on an idle socket.
    const endings = await page.evaluate(async ({ base, token }) => {
      const url = `${base.replace(/^http/, "ws")}/api/chat/execute/`;
      const session = (agent, closeOn) =>
        new Promise((resolve, reject) => {
          const ws = new WebSocket(`${url}${agent}?token=${encodeURIComponent(token)}`);
          const timer = setTimeout(() => reject(new Error(`no close event (${agent}, ${closeOn})`)), 15000);
          ws.onopen = () => {
            if (closeOn === "idle") ws.close();
            else ws.send(JSON.stringify({ message: "hello" }));
          };
          ws.onmessage = (m) => {
            const f = JSON.parse(m.data);
            if (closeOn === "terminal" && f.type === "flow_completed") ws.close();
            if (closeOn === "chunk" && f.type === "llm_chunk") ws.close(1000, "user left");
          };
          ws.onclose = (e) => {
            clearTimeout(timer);
            resolve({ agent, closeOn, code: e.code, wasClean: e.wasClean });
          };
        });
      return [
        await session("echo", "terminal"),
        await session("assistant", "chunk"),
        await session("echo", "idle"),
      ];
    }, { base: BASE, token: TOKEN });
    for (const e of endings) {
      assert.equal(e.wasClean, true, `clean close: ${JSON.stringify(e)}`);
      assert.notEqual(e.code, 1006, `not an abnormal closure: ${JSON.stringify(e)}`);
    }
  } finally {
    await context.close();
  }
});
