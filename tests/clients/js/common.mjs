// Shared by vercel.mjs and agui.mjs: the gateway from the environment, one line per passing
// check (exit 1 at the first failure), and the native WebSocket path (docs/protocol.md) that
// every dialect's answer is compared with. Node 20 needs --experimental-websocket for the global
// WebSocket (tests/clients/run.sh passes it when needed); the token goes in the `bearer`
// subprotocol, as a browser would send it.

export const BASE = (process.env.FLOWGATE_URL || "").replace(/\/+$/, "");
export const TOKEN = process.env.FLOWGATE_TOKEN || "";
if (!BASE || !TOKEN) {
  console.error("set FLOWGATE_URL and FLOWGATE_TOKEN (tests/clients/run.sh does)");
  process.exit(2);
}
export const AUTH = { Authorization: `Bearer ${TOKEN}` };
export const QUESTION = "What is flowgate?";

export function check(cond, what) {
  if (!cond) {
    console.error(`FAIL: ${what}`);
    process.exit(1);
  }
  console.log(`ok: ${what}`);
}

/** `check` for equal values, showing both when they differ. */
export function checkEqual(got, want, what) {
  const a = JSON.stringify(got);
  const b = JSON.stringify(want);
  if (a !== b) console.error(`  got:  ${a}\n  want: ${b}`);
  check(a === b, what);
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Reject after `ms` with `what`, so a hung stream fails the script instead of stalling it. */
export function within(ms, promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Run `agent` on the native WebSocket path. Returns the frames, the streamed text, and the text
 * blocks a dialect with message ids shows (DIALECTS rule 4: one block per LLM element's chunks;
 * a `final_output` that neither equals nor extends the text so far is a block of its own).
 */
export async function native(agent, message, history) {
  if (typeof WebSocket !== "function") throw new Error("no global WebSocket: run node with --experimental-websocket");
  const url = `${BASE.replace(/^http/, "ws")}/api/chat/execute/${agent}`;
  const ws = new WebSocket(url, ["bearer", TOKEN]);
  const frames = [];
  await within(
    30000,
    new Promise((resolve, reject) => {
      ws.onopen = () => {
        const run = { type: "run", message };
        if (history) run.conversation_history = history;
        ws.send(JSON.stringify(run));
      };
      ws.onmessage = (m) => {
        const f = JSON.parse(m.data);
        frames.push(f);
        if (["flow_completed", "flow_error", "flow_cancelled", "error"].includes(f.type)) resolve();
      };
      ws.onerror = () => reject(new Error(`native ${agent}: the socket failed`));
      ws.onclose = (e) => reject(new Error(`native ${agent}: closed ${e.code} before the end`));
    }),
    `native ${agent}`,
  );
  ws.onclose = null;
  ws.close(1000);
  let text = "";
  const blocks = [];
  for (const f of frames) {
    if (f.type === "llm_chunk" && f.data.content) {
      const id = f.data.element_id;
      if (blocks.at(-1)?.id !== id) blocks.push({ id, text: "" });
      blocks.at(-1).text += f.data.content;
      text += f.data.content;
    } else if (f.type === "final_output") {
      const t = f.data.text_output ?? "";
      if (t === text) continue;
      if (text && t.startsWith(text)) {
        blocks.at(-1).text += t.slice(text.length);
        text = t;
      } else {
        blocks.push({ id: `final-${f.data.element_id}`, text: t });
      }
    }
  }
  return { frames, text, blocks, end: frames.at(-1) };
}

/** Follow run `runId` on the native path (`resume` from the start); return its terminal frame. */
export async function nativeTerminal(runId) {
  const ws = new WebSocket(`${BASE.replace(/^http/, "ws")}/api/chat/execute/assistant`, ["bearer", TOKEN]);
  const end = await within(
    30000,
    new Promise((resolve, reject) => {
      ws.onopen = () => ws.send(JSON.stringify({ type: "resume", run_id: runId, after_seq: 0 }));
      ws.onmessage = (m) => {
        const f = JSON.parse(m.data);
        if (["flow_completed", "flow_error", "flow_cancelled", "error"].includes(f.type)) resolve(f);
      };
      ws.onerror = () => reject(new Error(`resume ${runId}: the socket failed`));
    }),
    `resume ${runId}`,
  );
  ws.close(1000);
  return end;
}
