//! `llm_text` against an OpenAI-compatible endpoint (`--llm-base-url`): a fake SSE server on
//! port 0 inside each test, the real engine through a WebSocket client (and once through the
//! gateway). Covers streaming order, the request sent, API errors, malformed streams, the gap
//! timeout and cancellation closing the endpoint connection. (The same over `https://`:
//! `engine_https`.)

use std::time::Duration;

use serde_json::json;

use crate::common::{spawn_engine, streamed_text};
use crate::fake_llm::*;

#[tokio::test]
async fn endpoint_deltas_stream_as_llm_chunks_in_order() {
    let pieces = vec![
        (ms(10), chunk(": keep-alive\n\n")),
        (
            ms(10),
            chunk(&format!(
                "data: {}\n\n",
                json!({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
            )),
        ),
        (ms(20), chunk(&delta("Hel"))),
        (ms(20), chunk(&delta("lo"))),
        // One SSE line split over two HTTP chunks, and two lines in one chunk.
        (ms(20), {
            let d = delta(" wor");
            let (a, b) = d.split_at(12);
            format!("{}{}", chunk(a), chunk(b))
        }),
        (ms(20), chunk(&format!("{}{}", delta("ld"), delta("!")))),
        (
            ms(10),
            chunk(&format!(
                "data: {}\n\n",
                json!({"choices": [], "usage": {"total_tokens": 9}})
            )),
        ),
        (ms(10), chunk("data: [DONE]\n\n")),
        (ms(0), "0\r\n\r\n".to_owned()),
    ];
    let fake = fake_llm(SSE_CHUNKED, pieces).await;
    let engine = spawn_engine(endpoint_config(&fake.base_url)).await;
    let flow = llm_flow(
        json!({"wrapper_prompt": "User: {prompt}", "temperature": 0.2,
                               "max_tokens": 50, "llm_hidden_prompt": "SECRET-INSTRUCTION"}),
    );
    let events = run_to_end(&engine, &flow, &inputs("hello there")).await;

    assert_eq!(
        events.last().unwrap()["type"],
        "flow_completed",
        "{events:#?}"
    );
    assert_eq!(chunk_texts(&events), ["Hel", "lo", " wor", "ld", "!"]);
    let first = of_type(&events, "llm_chunk")[0];
    assert_eq!(
        first["data"]["metadata"],
        json!({"element_id": "llm", "element_type": "llm_text", "element_name": "LLM",
               "flow_id": "llm-flow"})
    );
    let completed = of_type(&events, "element_completed");
    let llm_done = completed
        .iter()
        .find(|e| e["data"]["element_id"] == "llm")
        .unwrap();
    assert_eq!(llm_done["data"]["outputs"]["llm_output"], "Hello world!");
    let final_output = of_type(&events, "final_output")[0];
    assert_eq!(final_output["data"]["text_output"], "Hello world!");
    let prompt = of_type(&events, "llm_prompt")[0];
    assert_eq!(prompt["data"]["model"], "local-model");

    let req = fake.request.await.expect("the endpoint got a request");
    req.assert_chat_completion_with_the_test_key();
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(
        req.body,
        json!({"model": "local-model",
               "messages": [{"role": "user", "content": "User: hello there"}],
               "temperature": 0.2, "max_tokens": 50, "stream": true})
    );
    assert!(!req.body.to_string().contains("SECRET-INSTRUCTION"));
}

#[tokio::test]
async fn a_content_length_stream_with_the_element_model_and_no_key_works() {
    let body: String = [delta("One"), delta(" two"), "data: [DONE]\n\n".to_owned()].concat();
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let fake = fake_llm(&head, vec![(ms(10), body)]).await;
    let engine = spawn_engine(endpoint_config_with(&fake.base_url, |e| e.api_key = None)).await;
    let events = run_to_end(
        &engine,
        &llm_flow(json!({"model": "gpt-test"})),
        &inputs("q"),
    )
    .await;
    assert_eq!(
        events.last().unwrap()["type"],
        "flow_completed",
        "{events:#?}"
    );
    assert_eq!(chunk_texts(&events), ["One", " two"]);
    let req = fake.request.await.unwrap();
    assert_eq!(req.body["model"], "gpt-test");
    assert_eq!(req.header("authorization"), None);
}

#[tokio::test]
async fn an_api_error_status_is_an_element_error_with_the_api_message() {
    let body = json!({"error": {"message": "Invalid API key", "type": "invalid_request_error"}})
        .to_string();
    let head = format!(
        "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let fake = fake_llm(&head, vec![]).await;
    let engine = spawn_engine(endpoint_config(&fake.base_url)).await;
    let events = run_to_end(&engine, &llm_flow(json!({})), &inputs("hi")).await;
    assert_eq!(
        element_error(&events),
        "LLM request failed: 401 Unauthorized: Invalid API key"
    );
    assert!(of_type(&events, "llm_chunk").is_empty());
    assert_eq!(events.last().unwrap()["type"], "flow_error");
}

#[tokio::test]
async fn a_malformed_stream_is_an_element_error() {
    let pieces = vec![
        (ms(10), chunk(&delta("ok"))),
        (ms(10), chunk("data: {not json\n\n")),
    ];
    let fake = fake_llm(SSE_CHUNKED, pieces).await;
    let engine = spawn_engine(endpoint_config(&fake.base_url)).await;
    let events = run_to_end(&engine, &llm_flow(json!({})), &inputs("hi")).await;
    let error = element_error(&events);
    assert!(
        error.starts_with("LLM stream is malformed: a data line is not JSON"),
        "{error}"
    );
    assert_eq!(chunk_texts(&events), ["ok"]);
}

#[tokio::test]
async fn a_stream_that_stalls_fails_on_the_gap_timeout() {
    let fake = fake_llm(SSE_CHUNKED, vec![(ms(10), chunk(&delta("first")))]).await;
    let engine = spawn_engine(endpoint_config_with(&fake.base_url, |e| {
        e.timeout = ms(300)
    }))
    .await;
    let events = run_to_end(&engine, &llm_flow(json!({})), &inputs("hi")).await;
    let error = element_error(&events);
    assert!(
        error.contains("stalled") && error.contains("--llm-timeout"),
        "{error}"
    );
    assert_eq!(chunk_texts(&events), ["first"]);
    // The engine dropped the stalled connection.
    tokio::time::timeout(WAIT, fake.closed)
        .await
        .expect("connection closed")
        .unwrap();
}

#[tokio::test]
async fn an_oversized_output_is_an_element_error() {
    let pieces = (0..10)
        .map(|_| (ms(1), chunk(&delta("0123456789"))))
        .collect();
    let fake = fake_llm(SSE_CHUNKED, pieces).await;
    let engine = spawn_engine(endpoint_config_with(&fake.base_url, |e| {
        e.max_output_bytes = 35
    }))
    .await;
    let events = run_to_end(&engine, &llm_flow(json!({})), &inputs("hi")).await;
    let error = element_error(&events);
    assert!(error.contains("--llm-max-output-bytes"), "{error}");
    assert_eq!(chunk_texts(&events).len(), 3);
}

#[tokio::test]
async fn an_unreachable_endpoint_is_an_element_error() {
    let dead = crate::common::dead_addr().await;
    let engine = spawn_engine(endpoint_config(&format!("http://{dead}/v1"))).await;
    let events = run_to_end(&engine, &llm_flow(json!({})), &inputs("hi")).await;
    let error = element_error(&events);
    assert!(
        error.starts_with("LLM request failed: cannot connect to"),
        "{error}"
    );
}

#[tokio::test]
async fn closing_the_engine_socket_mid_stream_closes_the_endpoint_connection() {
    // One delta, then silence: only the cancellation (not the 5 s gap timeout, nor a failed
    // `llm_chunk` send) can close the connection within the 2 s below.
    let pieces = vec![(ms(10), chunk(&delta("first")))];
    let fake = fake_llm(SSE_CHUNKED, pieces).await;
    let engine = spawn_engine(endpoint_config(&fake.base_url)).await;
    let mut ws = start_run(&engine, &llm_flow(json!({})), &inputs("hi")).await;
    loop {
        let e = next_event(&mut ws)
            .await
            .expect("events until the first chunk");
        if e["type"] == "llm_chunk" {
            break;
        }
    }
    ws.close(None).await.unwrap();
    drop(ws);
    tokio::time::timeout(Duration::from_secs(2), fake.closed)
        .await
        .expect("the endpoint connection closes promptly after the run is cancelled")
        .unwrap();
}

#[tokio::test]
async fn the_assistant_agent_streams_from_the_endpoint_through_the_gateway() {
    let pieces = vec![
        (ms(10), chunk(&delta("Flowgate "))),
        (ms(10), chunk(&delta("relays "))),
        (ms(10), chunk(&delta("chains."))),
        (ms(10), chunk("data: [DONE]\n\n")),
        (ms(0), "0\r\n\r\n".to_owned()),
    ];
    let fake = fake_llm(SSE_CHUNKED, pieces).await;
    let frames =
        assistant_run_through_the_gateway(endpoint_config(&fake.base_url), "What is flowgate?")
            .await;
    assert_eq!(streamed_text(&frames), "Flowgate relays chains.");
    let final_output = frames.iter().find(|f| f["type"] == "final_output").unwrap();
    assert_eq!(
        final_output["data"]["text_output"],
        "Flowgate relays chains."
    );
    let req = fake.request.await.unwrap();
    // The stored element's own model wins over --llm-model.
    assert_eq!(req.body["model"], "us.deepseek.r1-v1:0");
    let content = req.body["messages"][0]["content"].as_str().unwrap();
    assert!(content.contains("User: What is flowgate?"), "{content}");
}

#[tokio::test]
async fn a_non_json_error_body_is_quoted_in_the_element_error() {
    let head = "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\n\
                Content-Length: 14\r\n\r\nupstream down\n";
    let fake = fake_llm(head, vec![]).await;
    let engine = spawn_engine(endpoint_config(&fake.base_url)).await;
    let events = run_to_end(&engine, &llm_flow(json!({})), &inputs("hi")).await;
    assert_eq!(
        element_error(&events),
        "LLM request failed: 502 Bad Gateway: upstream down"
    );
}

#[tokio::test]
async fn a_stream_that_ends_before_done_is_an_element_error() {
    let pieces = vec![
        (ms(10), chunk(&delta("half"))),
        (ms(10), "0\r\n\r\n".into()),
    ];
    let fake = fake_llm(SSE_CHUNKED, pieces).await;
    let engine = spawn_engine(endpoint_config(&fake.base_url)).await;
    let events = run_to_end(&engine, &llm_flow(json!({})), &inputs("hi")).await;
    let error = element_error(&events);
    assert!(error.contains("ended before `data: [DONE]`"), "{error}");
    assert_eq!(chunk_texts(&events), ["half"]);
}

#[tokio::test]
async fn a_non_streaming_json_answer_is_one_chunk() {
    let body = json!({"choices": [{"index": 0, "message": {"role": "assistant",
                                                          "content": "All at once."}}]})
    .to_string();
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let fake = fake_llm(&head, vec![]).await;
    let engine = spawn_engine(endpoint_config(&fake.base_url)).await;
    let events = run_to_end(&engine, &llm_flow(json!({})), &inputs("hi")).await;
    assert_eq!(
        events.last().unwrap()["type"],
        "flow_completed",
        "{events:#?}"
    );
    assert_eq!(chunk_texts(&events), ["All at once."]);
}

#[tokio::test]
async fn closing_the_engine_socket_before_the_first_byte_closes_the_endpoint_connection() {
    // The endpoint reads the request and never answers.
    let mut fake = fake_llm("", vec![]).await;
    let engine = spawn_engine(endpoint_config(&fake.base_url)).await;
    let mut ws = start_run(&engine, &llm_flow(json!({})), &inputs("hi")).await;
    tokio::time::timeout(WAIT, &mut fake.request)
        .await
        .expect("the request arrives")
        .unwrap();
    ws.close(None).await.unwrap();
    drop(ws);
    tokio::time::timeout(Duration::from_secs(2), fake.closed)
        .await
        .expect("the endpoint connection closes before the 5 s first-byte timeout")
        .unwrap();
}
