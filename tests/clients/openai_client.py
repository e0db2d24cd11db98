"""The `openai` dialect (Chat Completions) against the official `openai` Python SDK.

`OpenAI(base_url=<gateway>/v1, api_key=<the flowgate JWT>)` is the whole setup a caller needs.
The answers are compared with the native WebSocket path (docs/protocol.md) for the same agent
and message: same flow, same scripted model, so the same text. `max_retries=0` so that a 429 or
a 5xx is seen as it comes (the SDK would otherwise retry them).

Agents: `assistant` (one LLM element), and from the fixture folder tests/clients/flows (the
demo runs with `--flows-dir` on it): `failing` (streams an answer, then a `rest_api` element to
a host the engine blocks fails the run: `flow_error` after `flow_started`) and `slow` (twelve
LLM elements in a row: a run that lasts long enough to be held open).

Usage: FLOWGATE_URL=http://host:port FLOWGATE_TOKEN=<jwt> python openai_client.py
"""

import asyncio
import json
import os
import sys
import time

import openai
import websockets
from openai import OpenAI

BASE = os.environ["FLOWGATE_URL"].rstrip("/")
TOKEN = os.environ["FLOWGATE_TOKEN"]
QUESTION = "What is flowgate?"
HISTORY = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello! How can I help?"},
]
# The demo's per-user cap (--max-runs-per-user; `flowgate demo` keeps the default 8).
MAX_RUNS_PER_USER = int(os.environ.get("FLOWGATE_MAX_RUNS_PER_USER", "8"))


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def native(agent, message, history=None):
    """Run `agent` on the native WebSocket path; return (streamed text, final_output texts, terminal)."""

    async def run():
        url = BASE.replace("http", "ws", 1) + f"/api/chat/execute/{agent}"
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with websockets.connect(url, additional_headers=headers) as ws:
            frame = {"type": "run", "message": message}
            if history:
                frame["conversation_history"] = history
            await ws.send(json.dumps(frame))
            text, finals = "", []
            async for raw in ws:
                f = json.loads(raw)
                if f["type"] == "llm_chunk":
                    text += f["data"]["content"]
                elif f["type"] == "final_output":
                    finals.append(f["data"]["text_output"])
                elif f["type"] in ("flow_completed", "flow_error", "flow_cancelled", "error"):
                    return text, finals, f

    return asyncio.run(asyncio.wait_for(run(), 30))


def main():
    client = OpenAI(base_url=f"{BASE}/v1", api_key=TOKEN, max_retries=0, timeout=30.0)

    answer, finals, end = native("assistant", QUESTION)
    check(end["type"] == "flow_completed" and finals == [answer], "the native path answers")

    models = client.models.list()
    ids = [m.id for m in models.data]
    check("assistant" in ids, f"models.list() names assistant ({ids})")
    m = next(m for m in models.data if m.id == "assistant")
    check(m.object == "model" and m.owned_by == "flowgate", "a model is {object: model, owned_by: flowgate}")

    messages = [{"role": "user", "content": QUESTION}]
    done = client.chat.completions.create(model="assistant", messages=messages)
    check(done.object == "chat.completion" and done.model == "assistant", "stream=false: one chat.completion")
    choice = done.choices[0]
    check(choice.message.role == "assistant" and choice.finish_reason == "stop", "the choice is the assistant's, finish_reason stop")
    check(choice.message.content == answer, "stream=false: the text of the native path")
    check(done.id.startswith("chatcmpl-"), "the id is chatcmpl-<run_id>")

    stream = client.chat.completions.create(model="assistant", messages=messages, stream=True)
    check(stream.response.headers.get("content-type", "").startswith("text/event-stream"), "stream=true: text/event-stream")
    run_id = stream.response.headers.get("x-flowgate-run-id")
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    check(text == answer, "stream=true: the joined deltas are the text of the native path")
    check(text == choice.message.content, "streaming and non-streaming give the same text")
    check(len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 2, "the answer comes in several deltas")
    check(len({(c.id, c.created) for c in chunks}) == 1, "one id and created on every chunk")
    check(run_id and chunks[0].id == f"chatcmpl-{run_id}", "the id carries x-flowgate-run-id")
    roles = [c.choices[0].delta.role for c in chunks if c.choices]
    check(roles[0] == "assistant" and not any(roles[1:]), "role only in the first delta")
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    check(reasons[-1] == "stop" and not any(reasons[:-1]), "finish_reason null until the last chunk, then stop")
    check(all(c.usage is None for c in chunks), "no usage chunk unless asked")

    chunks = list(
        client.chat.completions.create(
            model="assistant", messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )
    last = chunks[-1]
    check(last.choices == [] and last.usage is not None, "include_usage: a last chunk with usage and no choices")
    check(all(c.usage is None for c in chunks[:-1]), "include_usage: usage null on the other chunks")
    check(
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer,
        "include_usage: the same text",
    )

    with_history = HISTORY + messages
    answer2, _, _ = native("assistant", QUESTION, HISTORY)
    got = client.chat.completions.create(model="assistant", messages=with_history)
    check(got.choices[0].message.content == answer2 and answer2 != answer, "earlier messages are the history (as on the native path)")
    system = [{"role": "system", "content": "Be terse."}] + messages
    got = client.chat.completions.create(model="assistant", messages=system)
    check(got.choices[0].message.content == answer, "a system message is ignored (the flow owns its prompts)")
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "flowgate?"}]}]
    got = client.chat.completions.create(model="assistant", messages=parts)
    check(got.choices[0].message.content == answer, "content as a list of text parts: the parts joined")

    if hasattr(client.chat.completions, "stream"):
        deltas = []
        with client.chat.completions.stream(model="assistant", messages=messages) as s:
            for event in s:
                if event.type == "content.delta":
                    deltas.append(event.delta)
            final = s.get_final_completion()
        check("".join(deltas) == answer, "chat.completions.stream(): content.delta events are the answer")
        check(
            final.choices[0].message.content == answer and final.choices[0].finish_reason == "stop",
            "chat.completions.stream(): the accumulated completion is the answer, finish_reason stop",
        )
    else:
        print(f"note: openai {openai.__version__} has no chat.completions.stream(); skipped")

    # Errors before the stream: the HTTP status and OpenAI's error shape, so the SDK's own classes.
    bad = OpenAI(base_url=f"{BASE}/v1", api_key="not-a-token", max_retries=0, timeout=30.0)
    try:
        bad.chat.completions.create(model="assistant", messages=messages, stream=True)
        check(False, "a bad token is refused")
    except openai.AuthenticationError as e:
        check(e.status_code == 401 and e.type == "authentication_error", "a bad token: AuthenticationError (401)")
    try:
        bad.models.list()
        check(False, "models.list() with a bad token is refused")
    except openai.AuthenticationError:
        check(True, "models.list() with a bad token: AuthenticationError")
    for stream in (False, True):
        try:
            client.chat.completions.create(model="nope", messages=messages, stream=stream)
            check(False, "an unknown model is refused")
        except openai.NotFoundError as e:
            check(e.code == "model_not_found", f"model nope (stream={stream}): NotFoundError, code model_not_found")
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    try:
        client.chat.completions.create(model="assistant", messages=messages, tools=[tool])
        check(False, "client tools are refused")
    except openai.BadRequestError as e:
        check(e.status_code == 400, "tools: BadRequestError (400): flowgate agents cannot call client tools")
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]
    try:
        client.chat.completions.create(model="assistant", messages=image)
        check(False, "an image part is refused")
    except openai.BadRequestError:
        check(True, "an image part: BadRequestError")

    # An error after the stream started: an error event, no [DONE], and the SDK raises APIError.
    partial, _, end = native("failing", QUESTION)
    check(end["type"] == "flow_error" and partial, "native: `failing` streams, then flow_error")
    stream = client.chat.completions.create(model="failing", messages=messages, stream=True)
    got = []
    try:
        for c in stream:
            if c.choices:
                got.append(c.choices[0])
        check(False, "a run failing after it started raises")
    except openai.APIStatusError as e:
        check(False, f"the failure after the start is not an HTTP status error ({e})")
    except openai.APIError as e:
        check(isinstance(e.body, dict) and e.body.get("code") == "flow_error", f"a failure after the start: APIError, code flow_error ({e.message})")
    check("".join(c.delta.content or "" for c in got) == partial, "the text before the failure is what was streamed")
    check(not any(c.finish_reason for c in got), "no finish_reason passes the cut answer off as whole")
    try:
        client.chat.completions.create(model="failing", messages=messages)
        check(False, "stream=false: a failed run is refused")
    except openai.InternalServerError as e:
        check(e.status_code == 500, "stream=false: a failed run is InternalServerError (500)")

    # Too many runs: hold the user's cap of streaming runs open, then one more is a 429.
    held = []
    try:
        for _ in range(MAX_RUNS_PER_USER):
            held.append(client.chat.completions.create(model="slow", messages=messages, stream=True))
        try:
            client.chat.completions.create(model="assistant", messages=messages, stream=True)
            check(False, f"run {MAX_RUNS_PER_USER + 1} is refused")
        except openai.RateLimitError as e:
            check(e.status_code == 429 and e.type == "rate_limit_error", f"{MAX_RUNS_PER_USER} runs in progress: the next one is RateLimitError (429)")
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 5
    while True:
        try:
            got = client.chat.completions.create(model="assistant", messages=messages)
            break
        except openai.RateLimitError:
            if time.monotonic() > deadline:
                check(False, "closing the streams cancels their runs within 5 s")
            time.sleep(0.05)
    check(got.choices[0].message.content == answer, "closing the streams cancelled their runs: a new run is accepted")
    print("all openai client checks passed")


main()
