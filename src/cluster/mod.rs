//! Many gateways on NATS JetStream (issue 16; docs/scaling.md): a leaf the relay uses, knowing
//! runs only as ids and stamped frame bytes.
//!
//! Design note. The gateway that opened a run's engine socket owns the run: it assigns `seq`,
//! writes each frame to its own clients at once, to the run log, and to the run's subject
//! `flowgate.run.<run_id>` on the `--nats-stream` JetStream stream, with the message id
//! `<run_id>:<seq>` so a retried publish is stored once ([`Cluster::publish`], one task per
//! gateway, a bounded queue). Any other gateway follows a live run it does not own by reading
//! that subject from its first message and on, live ([`Cluster::follow`]: an ordered consumer,
//! so reading what was stored and then what comes is one subscription with no race; the relay
//! de-duplicates by `seq` and refuses a gap). Cancels and attach counts go to the owner over
//! request/reply on `flowgate.node.<node>.{cancel,attach}` ([`Cluster::ask`]). Postgres stays the
//! source of truth: which gateway owns a run is in its run log row.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The frames of one followed run ([`Cluster::follow`]). Its JetStream consumer is deleted
/// when it is dropped, rather than left for the server's inactivity timeout (30 s), so that
/// many short follows never pile up against the server's consumer limit. (A consumer the
/// ordered consumer had to re-create after an error has another name, and expires.)
pub struct Follow {
    frames: futures_util::stream::BoxStream<'static, Result<(u64, Bytes), ClusterError>>,
    consumer: Option<(stream::Stream, String, Duration)>,
}

impl Stream for Follow {
    type Item = Result<(u64, Bytes), ClusterError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.frames.as_mut().poll_next(cx)
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        let Some((stream, name, timeout)) = self.consumer.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let deleted = tokio::time::timeout(timeout, stream.delete_consumer(&name)).await;
                if !matches!(deleted, Ok(Ok(_))) {
                    tracing::debug!(consumer = %name, "a follow's consumer was not deleted: it expires");
                }
            });
        }
    }
}

/// What [`Cluster::connect`] needs.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `nats://host:port` (comma-separated for several servers; `nats://user:password@host`
    /// for a server with accounts: the password is never shown).
    pub url: String,
    /// This gateway's id (its run log instance id: the owner of the runs it starts).
    pub node: Uuid,
    /// The JetStream stream holding the runs' frames.
    pub stream: String,
    /// Frames older than this are dropped from the stream (finished runs replay from the run
    /// log).
    pub max_age: Duration,
    /// Most bytes the stream keeps (oldest dropped first).
    pub max_bytes: i64,
    /// Time allowed for the connect, a stream call or a request to another gateway.
    pub timeout: Duration,
    /// Frames waiting to be published (beyond: counted as lost, the follow of that run fails).
    pub queue: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot connect to NATS at {url}: {cause}")]
    Connect { url: String, cause: String },
    #[error("JetStream stream `{stream}`: {cause}")]
    Stream { stream: String, cause: String },
    #[error("NATS did not answer within {0:?}")]
    Timeout(Duration),
    #[error("no gateway answered for node {0} (it is gone, or NATS is down)")]
    NoAnswer(Uuid),
    #[error("NATS request failed: {0}")]
    Request(String),
}

/// Counters the metrics and readiness read.
#[derive(Debug, Default)]
pub struct ClusterStats {
    pub published: AtomicU64,
    /// Frames not published: the queue was full or NATS refused them.
    pub publish_failures: AtomicU64,
    /// The last probe (or publish) saw NATS working.
    pub healthy: AtomicBool,
    /// The stream was made (or found).
    pub ready: AtomicBool,
    /// The last probe came back: a message this gateway published reached its own
    /// subscription in time (a connection that looks up but delivers nothing fails it).
    pub probe_ok: AtomicBool,
}

/// A cheap-to-clone handle on the cluster.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    config: ClusterConfig,
    queue: mpsc::Sender<Publish>,
    stats: Arc<ClusterStats>,
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Publish {
    run_id: Uuid,
    seq: u64,
    frame: Bytes,
}

/// A request another gateway sends to a run's owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// Cancel the run (a client asked on another gateway).
    Cancel,
    /// A client on another gateway follows the run (so it is not cancelled for lack of one).
    Attach,
    /// That client let go.
    Detach,
}

impl Ask {
    fn verb(self) -> &'static str {
        match self {
            Ask::Cancel => "cancel",
            Ask::Attach => "attach",
            Ask::Detach => "detach",
        }
    }
}

/// The server list as logs and `/readyz` show it: no password.
fn shown(urls: &str) -> String {
    urls.split(',')
        .map(|u| crate::startup::redacted_url(u.trim()))
        .collect::<Vec<_>>()
        .join(",")
}

/// The `seq` in a stored frame's message id (`<run_id>:<seq>`; 0 when there is none).
fn seq_of(headers: Option<&async_nats::HeaderMap>) -> u64 {
    headers
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
        .and_then(|id| id.as_str().rsplit_once(':'))
        .and_then(|(_, seq)| seq.parse().ok())
        .unwrap_or(0)
}

/// The subject of a run's frames.
fn run_subject(run_id: Uuid) -> String {
    format!("flowgate.run.{run_id}")
}

fn node_subject(node: Uuid, ask: Ask) -> String {
    format!("flowgate.node.{node}.{}", ask.verb())
}

impl Cluster {
    /// Connect and start the publisher. NATS need not be up: the client keeps reconnecting in
    /// the background and the stream is made once it answers; meanwhile the cluster is
    /// degraded ([`Cluster::ready`] is false: publishing and following fail, counted).
    pub async fn connect(config: ClusterConfig) -> Result<Cluster, ClusterError> {
        let options = async_nats::ConnectOptions::new()
            .name(format!("flowgate {}", config.node))
            .connection_timeout(config.timeout)
            .request_timeout(Some(config.timeout))
            .retry_on_initial_connect()
            .max_reconnects(None);
        let client = async_nats::connect_with_options(config.url.as_str(), options)
            .await
            .map_err(|e| ClusterError::Connect {
                url: shown(&config.url),
                cause: e.to_string(),
            })?;
        let js = jetstream::new(client.clone());
        let (queue, rx) = mpsc::channel(config.queue.max(1));
        let stats = Arc::new(ClusterStats::default());
        let stop = CancellationToken::new();
        let cluster = Cluster {
            inner: Arc::new(Inner {
                client,
                js: js.clone(),
                config,
                queue,
                stats: stats.clone(),
                stop: stop.clone(),
            }),
        };
        // Wait a little for the first connection and the stream, so a healthy cluster is ready
        // when the gateway starts; past that, keep trying in the background.
        let setup = cluster.setup();
        let waited = tokio::time::timeout(cluster.inner.config.timeout, setup).await;
        if !matches!(waited, Ok(Ok(()))) {
            let why = match waited {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no answer within {:?}", cluster.inner.config.timeout),
            };
            tracing::warn!(url = %shown(&cluster.inner.config.url), cause = %why, "NATS is not reachable yet: cross-gateway resume and cancel are off until it is");
            let again = cluster.clone();
            let stop_setup = stop.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        _ = stop_setup.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    let timeout = again.inner.config.timeout;
                    if let Ok(Ok(())) = tokio::time::timeout(timeout, again.setup()).await {
                        tracing::info!("NATS is reachable: the cluster stream is ready");
                        return;
                    }
                }
            });
        }
        tokio::spawn(publisher(js, rx, stats, stop.clone()));
        tokio::spawn(probe(
            cluster.inner.client.clone(),
            cluster.node(),
            cluster.inner.config.timeout,
            cluster.inner.stats.clone(),
            stop,
        ));
        Ok(cluster)
    }

    /// Wait for the connection, then make sure the stream exists.
    async fn setup(&self) -> Result<(), ClusterError> {
        let config = &self.inner.config;
        while self.inner.client.connection_state() != async_nats::connection::State::Connected {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stream_config = stream::Config {
            name: config.stream.clone(),
            subjects: vec!["flowgate.run.*".into()],
            max_age: config.max_age,
            max_bytes: config.max_bytes,
            discard: stream::DiscardPolicy::Old,
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120).min(config.max_age),
            ..Default::default()
        };
        self.inner
            .js
            .get_or_create_stream(stream_config)
            .await
            .map_err(|e| ClusterError::Stream {
                stream: config.stream.clone(),
                cause: e.to_string(),
            })?;
        self.inner.stats.ready.store(true, Ordering::SeqCst);
        self.inner.stats.healthy.store(true, Ordering::SeqCst);
        // The probe task confirms delivery from here on.
        self.inner.stats.probe_ok.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// The stream exists and NATS is connected: runs can be followed and cancelled across
    /// gateways.
    pub fn ready(&self) -> bool {
        self.inner.stats.ready.load(Ordering::SeqCst)
            && self.inner.stats.probe_ok.load(Ordering::SeqCst)
            && self.connected()
    }

    /// Why the cluster is not ready (for `/readyz`), or `None`.
    pub fn trouble(&self) -> Option<String> {
        let stats = &self.inner.stats;
        if !self.connected() {
            Some(format!(
                "not connected to NATS at {}",
                self.inner.config.url
            ))
        } else if !stats.ready.load(Ordering::SeqCst) {
            Some(format!(
                "the JetStream stream `{}` is not available",
                self.inner.config.stream
            ))
        } else if !stats.probe_ok.load(Ordering::SeqCst) {
            Some(
                "connected, but a probe message did not come back in time (a stalled connection)"
                    .into(),
            )
        } else {
            None
        }
    }

    pub fn node(&self) -> Uuid {
        self.inner.config.node
    }

    pub fn stats(&self) -> &Arc<ClusterStats> {
        &self.inner.stats
    }

    /// Queue a stamped frame of a run this gateway owns for its subject (never blocks; `false`
    /// when the queue is full: the frame is not in the stream, and a follower of the run will
    /// see the gap).
    pub fn publish(&self, run_id: Uuid, seq: u64, frame: Bytes) -> bool {
        let queued = self
            .inner
            .queue
            .try_send(Publish { run_id, seq, frame })
            .is_ok();
        if !queued {
            self.inner
                .stats
                .publish_failures
                .fetch_add(1, Ordering::Relaxed);
        }
        queued
    }

    /// The frames of `run_id` from its first on, then live: `(seq, frame)` in stream order (a
    /// republished frame may come twice: de-duplicate by `seq`). Dropping the [`Follow`]
    /// deletes its consumer.
    pub async fn follow(&self, run_id: Uuid) -> Result<Follow, ClusterError> {
        let timeout = self.inner.config.timeout;
        let name = self.inner.config.stream.clone();
        let consumer_name = format!("flowgate-follow-{}", Uuid::new_v4().simple());
        let open = async {
            let stream = self
                .inner
                .js
                .get_stream(&name)
                .await
                .map_err(|e| e.to_string())?;
            let consumer = stream
                .create_consumer(consumer::pull::OrderedConfig {
                    name: Some(consumer_name.clone()),
                    filter_subject: run_subject(run_id),
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            let messages = consumer.messages().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((stream, messages))
        };
        let (stream, messages) = tokio::time::timeout(timeout, open)
            .await
            .map_err(|_| ClusterError::Timeout(timeout))?
            .map_err(|cause| ClusterError::Stream {
                stream: name.clone(),
                cause,
            })?;
        let frames = messages.map(move |m| {
            let m = m.map_err(|e| ClusterError::Stream {
                stream: name.clone(),
                cause: e.to_string(),
            })?;
            Ok((seq_of(m.headers.as_ref()), m.payload.clone()))
        });
        Ok(Follow {
            frames: Box::pin(frames),
            consumer: Some((stream, consumer_name, timeout)),
        })
    }

    /// The `seq` of the last frame stored for `run_id` (0 when there is none).
    pub async fn last_seq(&self, run_id: Uuid) -> Result<u64, ClusterError> {
        let timeout = self.inner.config.timeout;
        let name = &self.inner.config.stream;
        let stream_error = |cause: String| ClusterError::Stream {
            stream: name.clone(),
            cause,
        };
        let get = async {
            let stream = self
                .inner
                .js
                .get_stream(name)
                .await
                .map_err(|e| stream_error(e.to_string()))?;
            match stream
                .get_last_raw_message_by_subject(&run_subject(run_id))
                .await
            {
                Ok(m) => Ok(seq_of(Some(&m.headers))),
                Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(0),
                Err(e) => Err(stream_error(e.to_string())),
            }
        };
        tokio::time::timeout(timeout, get)
            .await
            .map_err(|_| ClusterError::Timeout(timeout))?
    }

    /// Store a frame now (not queued) and wait for the stream's answer: `Ok(true)` when it was
    /// stored, `Ok(false)` when a frame with its `seq` was already there (someone else wrote it).
    pub async fn publish_now(
        &self,
        run_id: Uuid,
        seq: u64,
        frame: Bytes,
    ) -> Result<bool, ClusterError> {
        let timeout = self.inner.config.timeout;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("{run_id}:{seq}").as_str(),
        );
        let publish = async {
            let ack = self
                .inner
                .js
                .publish_with_headers(run_subject(run_id), headers, frame)
                .await
                .map_err(|e| ClusterError::Request(e.to_string()))?
                .await
                .map_err(|e| ClusterError::Request(e.to_string()))?;
            Ok(!ack.duplicate)
        };
        tokio::time::timeout(timeout, publish)
            .await
            .map_err(|_| ClusterError::Timeout(timeout))?
    }

    /// Ask the gateway `owner` about `run_id`; `Ok(true)` when it has the run and did it.
    pub async fn ask(&self, owner: Uuid, run_id: Uuid, ask: Ask) -> Result<bool, ClusterError> {
        let timeout = self.inner.config.timeout;
        let request = self.inner.client.request(
            node_subject(owner, ask),
            Bytes::from(run_id.to_string().into_bytes()),
        );
        match tokio::time::timeout(timeout, request).await {
            Err(_) => Err(ClusterError::NoAnswer(owner)),
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                Err(ClusterError::NoAnswer(owner))
            }
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::TimedOut => {
                Err(ClusterError::NoAnswer(owner))
            }
            Ok(Err(e)) => Err(ClusterError::Request(e.to_string())),
            Ok(Ok(reply)) => Ok(&reply.payload[..] == b"ok"),
        }
    }

    /// Answer other gateways' requests about this gateway's runs with `handle` until `stop`.
    pub async fn serve(
        &self,
        handle: impl Fn(Ask, Uuid) -> bool + Send + Sync + 'static,
        stop: CancellationToken,
    ) -> Result<(), ClusterError> {
        let node = self.node();
        let client = self.inner.client.clone();
        let subscribe = |ask| {
            let client = client.clone();
            async move {
                client
                    .subscribe(node_subject(node, ask))
                    .await
                    .map(move |s| s.map(move |m| (ask, m)))
                    .map_err(|e| ClusterError::Request(e.to_string()))
            }
        };
        let all = futures_util::stream::select(
            subscribe(Ask::Cancel).await?,
            futures_util::stream::select(
                subscribe(Ask::Attach).await?,
                subscribe(Ask::Detach).await?,
            ),
        );
        tokio::spawn(async move {
            let mut all = std::pin::pin!(all);
            loop {
                let (ask, m) = tokio::select! {
                    _ = stop.cancelled() => return,
                    next = all.next() => match next {
                        Some(next) => next,
                        None => return,
                    },
                };
                let run_id = std::str::from_utf8(&m.payload)
                    .ok()
                    .and_then(|t| Uuid::parse_str(t).ok());
                let done = run_id.is_some_and(|id| handle(ask, id));
                if let Some(reply) = m.reply {
                    let answer: &'static [u8] = if done { b"ok" } else { b"unknown" };
                    let _ = client.publish(reply, Bytes::from_static(answer)).await;
                }
            }
        });
        Ok(())
    }

    /// Is NATS reachable now? (readiness: degraded when not).
    pub fn connected(&self) -> bool {
        self.inner.client.connection_state() == async_nats::connection::State::Connected
    }
}

/// Every few seconds, publish a nonce to this gateway's probe subject and wait for it on its
/// own subscription: a connection that says it is up but delivers nothing (the stall users of
/// such systems hit most) makes the cluster not ready until a probe comes back.
async fn probe(
    client: async_nats::Client,
    node: Uuid,
    timeout: Duration,
    stats: Arc<ClusterStats>,
    stop: CancellationToken,
) {
    let subject = format!("flowgate.probe.{node}");
    let mut tick = tokio::time::interval(PROBE_INTERVAL.min(timeout * 2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sub: Option<async_nats::Subscriber> = None;
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if sub.is_none() {
            sub = client.subscribe(subject.clone()).await.ok();
        }
        let Some(s) = sub.as_mut() else {
            stats.probe_ok.store(false, Ordering::SeqCst);
            continue;
        };
        n += 1;
        let nonce = n.to_string();
        let sent = client
            .publish(subject.clone(), Bytes::from(nonce.clone()))
            .await
            .is_ok();
        let came_back = sent
            && tokio::time::timeout(timeout, async {
                while let Some(m) = s.next().await {
                    if m.payload == nonce.as_bytes() {
                        return true;
                    }
                }
                false
            })
            .await
            .unwrap_or(false);
        let was = stats.probe_ok.swap(came_back, Ordering::SeqCst);
        if was && !came_back {
            tracing::warn!(
                "NATS probe did not come back within {timeout:?}: the cluster is degraded"
            );
        } else if !was && came_back && n > 1 {
            tracing::info!("NATS probe came back: the cluster is ready again");
        }
        if !came_back {
            // A fresh subscription next time (the old one may be the stalled part).
            sub = None;
        }
    }
}

/// How often the probe runs (at most twice the NATS timeout).
const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// A frame handed to the connection: the future of its ack.
struct Sent(AckFuture);

/// Frames sent and not yet acknowledged, at most.
const MAX_INFLIGHT: usize = 1024;

type AckFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
            > + Send,
    >,
>;

/// Publish queued frames in order. Acks are awaited in send order; when one fails (NATS went
/// away, or restarted), every unacknowledged frame is sent again, in order, until NATS takes
/// them (the message id makes a frame already stored a duplicate the stream drops), so a
/// restart loses nothing; meanwhile new frames wait in the bounded queue (a full queue is
/// counted and is a gap for followers).
async fn publisher(
    js: jetstream::Context,
    mut rx: mpsc::Receiver<Publish>,
    stats: Arc<ClusterStats>,
    stop: CancellationToken,
) {
    // Sends now (in order on the connection) and gives the future of its ack.
    let send = |p: &Publish| {
        let js = js.clone();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("{}:{}", p.run_id, p.seq).as_str(),
        );
        let subject = run_subject(p.run_id);
        let frame = p.frame.clone();
        async move {
            Sent(
                match js.publish_with_headers(subject, headers, frame).await {
                    Ok(ack) => Box::pin(ack.into_future()),
                    Err(e) => Box::pin(std::future::ready(Err(e))),
                },
            )
        }
    };
    let mut inflight: std::collections::VecDeque<(Publish, AckFuture)> = Default::default();
    let mut backoff = Duration::from_millis(50);
    enum Event {
        Stop,
        Frame(Option<Publish>),
        Ack(Result<jetstream::publish::PublishAck, jetstream::context::PublishError>),
    }
    loop {
        let room = inflight.len() < MAX_INFLIGHT;
        let event = {
            let front = async {
                match inflight.front_mut() {
                    Some((_, ack)) => ack.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => Event::Stop,
                next = rx.recv(), if room => Event::Frame(next),
                ack = front => Event::Ack(ack),
            }
        };
        match event {
            Event::Stop | Event::Frame(None) => return,
            Event::Frame(Some(p)) => {
                let Sent(ack) = send(&p).await;
                inflight.push_back((p, ack));
            }
            Event::Ack(Ok(_)) => {
                inflight.pop_front();
                stats.published.fetch_add(1, Ordering::Relaxed);
                stats.healthy.store(true, Ordering::SeqCst);
                backoff = Duration::from_millis(50);
            }
            Event::Ack(Err(e)) => {
                tracing::warn!(error = %e, waiting = inflight.len(), "NATS did not take a frame: sending the unacknowledged frames again");
                stats.healthy.store(false, Ordering::SeqCst);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                let again: Vec<Publish> = inflight.drain(..).map(|(p, _)| p).collect();
                for p in again {
                    let Sent(ack) = send(&p).await;
                    inflight.push_back((p, ack));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn server_lists_are_shown_without_passwords() {
        assert_eq!(
            super::shown("nats://flowgate:s3cret@nats-1:4222, nats://nats-2:4222"),
            "nats://flowgate:***@nats-1:4222,nats://nats-2:4222"
        );
    }
}
