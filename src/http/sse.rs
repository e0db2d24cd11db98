//! The SSE transport the HTTP dialects share: a run's payloads as `text/event-stream`, each
//! event written in one piece (some clients read an event's lines from one network read), a
//! `: keep-alive` comment every `--sse-heartbeat` while the run is quiet, headers that keep
//! proxies from buffering. The response is made only once the run reached `flow_started`
//! ([`crate::relay::stream::Follower::started`]), so earlier failures are HTTP errors; a client
//! that closes the connection drops the follower, which cancels the run.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::Response;

use crate::relay::stream::{Follower, Payload, StreamEncoder};

/// One SSE event: `id:` (when numbered), `event:` (when named), `data:`, blank line; LF only.
/// Payload data is one line of JSON (or a sentinel such as `[DONE]`).
pub fn event_bytes(p: &Payload) -> Bytes {
    let mut text = String::with_capacity(p.data.len() + 32);
    if let Some(id) = p.id {
        text.push_str("id: ");
        text.push_str(itoa::Buffer::new().format(id));
        text.push('\n');
    }
    if let Some(name) = p.event {
        text.push_str("event: ");
        text.push_str(name);
        text.push('\n');
    }
    text.push_str("data: ");
    text.push_str(&p.data);
    text.push_str("\n\n");
    Bytes::from(text)
}

/// Stream `first` and then the rest of the run; `on_end` runs once the terminal frame was
/// encoded (e.g. to remember the turn).
pub fn response<E, F>(
    follower: Follower<E>,
    first: Vec<Payload>,
    heartbeat: Duration,
    on_end: F,
) -> Response
where
    E: StreamEncoder,
    F: FnOnce(&E) + Send + 'static,
{
    let run_id = follower.run_id();
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = Stream {
        follower,
        pending: first.into(),
        beat,
        on_end: Some(on_end),
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(p) = st.pending.pop_front() {
                return Some((Ok::<_, Infallible>(event_bytes(&p)), st));
            }
            let on_end = st.on_end.take()?;
            tokio::select! {
                next = st.follower.next() => match next {
                    Some(payloads) => {
                        st.pending.extend(payloads);
                        st.on_end = Some(on_end);
                    }
                    // The run is over: what is pending went out; end the body.
                    None => on_end(st.follower.encoder()),
                },
                _ = st.beat.tick() => {
                    st.on_end = Some(on_end);
                    return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), st));
                }
            }
        }
    });
    let mut response = Response::new(Body::from_stream(stream));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tell nginx-like proxies not to buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Ok(v) = HeaderValue::from_str(&run_id.to_string()) {
        h.insert("x-flowgate-run-id", v);
    }
    response
}

struct Stream<E, F> {
    follower: Follower<E>,
    pending: VecDeque<Payload>,
    beat: tokio::time::Interval,
    /// `Some` until the run ended (then taken and called).
    on_end: Option<F>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_event_is_one_piece_with_its_blank_line() {
        let named = event_bytes(&Payload::named("token", r#"{"text":"Hi"}"#.into()));
        assert_eq!(&named[..], b"event: token\ndata: {\"text\":\"Hi\"}\n\n");
        let plain = event_bytes(&Payload::data("{}".into()));
        assert_eq!(&plain[..], b"data: {}\n\n");
        let numbered = event_bytes(&Payload::data("{}".into()).with_id(7));
        assert_eq!(&numbered[..], b"id: 7\ndata: {}\n\n");
    }
}
