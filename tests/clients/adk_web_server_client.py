"""The `adk` dialect's HTTP side against Google ADK's own client.

Runs `google.adk.cli.conformance.adk_web_server_client.AdkWebServerClient` (the ADK web server's
client: it validates every session and event with ADK's pydantic models, `Event` rejecting
unknown keys, and raises on an error line) against a running flowgate demo. ADK's client sends
no credentials, so it is given an httpx client that carries `Authorization: Bearer`, as
DIALECTS 2.4.2 says a caller must.

Usage: FLOWGATE_URL=http://host:port FLOWGATE_TOKEN=<jwt> FLOWGATE_USER=alice python adk_web_server_client.py
"""

import asyncio
import os
import sys

import httpx
from google.adk.cli.adk_web_server import RunAgentRequest
from google.adk.cli.conformance.adk_web_server_client import AdkWebServerClient
from google.genai import types


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


async def main():
    base = os.environ["FLOWGATE_URL"].replace("ws://", "http://")
    token = os.environ["FLOWGATE_TOKEN"]
    user = os.environ.get("FLOWGATE_USER", "alice")
    client = AdkWebServerClient(base_url=base, timeout=30.0)
    client._client = httpx.AsyncClient(
        base_url=base, timeout=30.0, headers={"Authorization": f"Bearer {token}"}
    )
    async with client:
        session = await client.create_session(app_name="assistant", user_id=user, state={"k": 1})
        check(session.app_name == "assistant" and session.user_id == user, "create_session")
        again = await client.get_session(app_name="assistant", user_id=user, session_id=session.id)
        check(again.id == session.id and again.state == {"k": 1}, "get_session")

        def request(text, streaming):
            return RunAgentRequest(
                app_name="assistant",
                user_id=user,
                session_id=session.id,
                new_message=types.Content(role="user", parts=[types.Part(text=text)]),
                streaming=streaming,
            )

        events = [e async for e in client.run_agent(request("What is flowgate?", True))]
        partials = [e for e in events if e.partial]
        final = events[-1]
        check(len(partials) >= 2, f"streamed {len(partials)} partial events")
        check(not final.partial and final.turn_complete, "one final event ends the turn")
        streamed = "".join(p.content.parts[0].text for p in partials)
        check(final.content.parts[0].text == streamed, "the final event repeats the whole answer")
        check(final.author == "assistant", "author is the agent")
        check(len({e.invocation_id for e in events}) == 1, "one invocationId per turn")
        check(
            final.custom_metadata["flowgate_run_id"] and final.custom_metadata["flowgate_seq"] > 0,
            "flowgate's run_id/seq in customMetadata",
        )

        events = [e async for e in client.run_agent(request("And then?", False))]
        check(len(events) == 1 and not events[0].partial, "streaming=false: only the final event")
        check(
            "What is flowgate?" in events[0].content.parts[0].text,
            "the session's earlier turn reached the flow as history",
        )

        await client.delete_session(app_name="assistant", user_id=user, session_id=session.id)
        try:
            await client.get_session(app_name="assistant", user_id=user, session_id=session.id)
            check(False, "a deleted session is gone")
        except httpx.HTTPStatusError as e:
            check(e.response.status_code == 404, "a deleted session is 404")
        try:
            async for _ in client.run_agent(request("hi", True)):
                pass
            check(False, "a run on a missing session is refused")
        except httpx.HTTPStatusError as e:
            check(e.response.status_code == 404, "a run on a missing session is an HTTP 404")

    anonymous = AdkWebServerClient(base_url=base, timeout=30.0)
    async with anonymous:
        try:
            await anonymous.create_session(app_name="assistant", user_id=user)
            check(False, "no token is refused")
        except httpx.HTTPStatusError as e:
            check(e.response.status_code == 401, "no token: HTTP 401")
    print("all adk client checks passed")


asyncio.run(main())
