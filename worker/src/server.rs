//! What the worker's HTTP endpoints share — the TCP admin API and metrics
//! (`http`), the console (`console`) and the admin socket
//! (`admin_socket`): the server loop with its limits, the admin tokens'
//! check, and streamed JSON Lines answers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use crate::operators::{Operator, OperatorError, StreamFailure};

/// What the HTTP server lets one client hold (SPEC §11.1): axum's own
/// `serve` has no bound on either, so a client that opens connections and
/// never finishes a request could hold sockets and tasks without end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// A connection that has not sent a whole request header this long
    /// after it opened, or after its previous response, is closed (so an
    /// idle keep-alive connection too: Prometheus reconnects per scrape).
    pub header_read_timeout: std::time::Duration,
    /// Connections served at once. The next waits unaccepted in the listen
    /// backlog (the kernel's, not palworker's memory) until one closes.
    pub max_connections: usize,
}

impl ServerLimits {
    /// The worker's limits: ample for a scraper, probes and operators.
    pub const WORKER: ServerLimits = ServerLimits {
        header_read_timeout: std::time::Duration::from_secs(10),
        max_connections: 256,
    };
}

/// Serves `router` on `listener` within [`ServerLimits::WORKER`] until
/// `shutdown` resolves (see [`serve_with_limits`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_limits(listener, router, ServerLimits::WORKER, shutdown).await
}

/// Serves `router` on `listener` over HTTP/1.1 within `limits` until
/// `shutdown` resolves: then no connection is accepted any more, requests
/// in flight finish, idle connections close, and it returns once every
/// connection has closed.
///
/// hyper's connection builder directly, because `axum::serve` offers
/// neither a header-read timeout nor a connection limit. A connection
/// holds a permit of a semaphore from before it is accepted until it
/// closes.
pub async fn serve_with_limits(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut shutdown = std::pin::pin!(shutdown);
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let connections = hyper_util::server::graceful::GracefulShutdown::new();
    // Whether the limit was reached since a connection was last admitted at
    // once: logged when it starts, not once per waiting connection.
    let mut saturated = false;
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                saturated = false;
                permit
            }
            Err(_) => {
                if !saturated {
                    saturated = true;
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "The HTTP server has as many connections as it serves at once; new ones wait until one closes."
                    );
                }
                tokio::select! {
                    permit = permits.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        // Never closed: nothing to wait for.
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    if !matches!(
                        error.kind(),
                        std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::ConnectionReset
                    ) {
                        // Out of file descriptors (EMFILE) and the like
                        // fail again at once: wait rather than spin.
                        tracing::error!(error = %error, "Accepting an HTTP connection failed; trying again in a second.");
                        tokio::select! {
                            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                            () = &mut shutdown => break,
                        }
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let connection = connections
            .watch(builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service));
        tokio::spawn(async move {
            // A header-read timeout or a client gone away: the client's
            // problem, and one line per connection would let any client
            // flood the log.
            if let Err(error) = connection.await {
                tracing::debug!(error = %error, "An HTTP connection ended with an error.");
            }
            drop(permit);
        });
    }
    drop(listener);
    connections.shutdown().await;
    Ok(())
}

/// Binds `listen` (the listener is handed to [`serve`]).
pub async fn bind(listen: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on http.listen {listen}: {e}"))
}

/// The operator whose admin token `presented` is, if any. Every configured
/// token is compared, in constant time each, whichever matches (the
/// console's sign-in asks the same).
pub(crate) fn token_operator(
    tokens: &[(Operator, SecretString)],
    presented: &str,
) -> Option<Operator> {
    let mut matched = None;
    for (operator, token) in tokens {
        let matches: bool = presented
            .as_bytes()
            .ct_eq(token.expose_secret().as_bytes())
            .into();
        if matches && matched.is_none() {
            matched = Some(operator);
        }
    }
    matched.filter(|_| !presented.is_empty()).cloned()
}

/// Bytes of JSON Lines gathered before they are queued for the client:
/// rows are a few hundred bytes, and a channel message and an HTTP chunk
/// per row would cost more than the row.
pub(crate) const STREAM_CHUNK_BYTES: usize = 16 * 1024;

/// Room for the row that takes a chunk past [`STREAM_CHUNK_BYTES`], so the
/// chunk's buffer is allocated once (a row is a few hundred bytes).
pub(crate) const STREAM_ROW_SLACK: usize = 4 * 1024;

/// Chunks queued between the ledger reader and the client at most: with
/// [`STREAM_CHUNK_BYTES`], what one streamed answer makes the worker hold
/// besides the reader's page of records.
pub(crate) const STREAM_QUEUE_CHUNKS: usize = 8;

/// What the ledger reader hands the response body.
enum Streamed {
    Lines(axum::body::Bytes),
    Failed(OperatorError),
}

/// The ledger reader's end of a streamed answer.
pub(crate) struct LineSink {
    sender: tokio::sync::mpsc::Sender<Streamed>,
    buffer: Vec<u8>,
    /// How long a queued chunk may wait for the client; `None`: as long as
    /// the client stays connected.
    pub(crate) stall_limit: Option<Duration>,
    /// The runtime, to wait for the queue with a time limit.
    runtime: tokio::runtime::Handle,
    /// The client went away (or stalled past the limit).
    pub(crate) gone: bool,
}

/// A [`LineSink`] as an `io::Write` of ready-made lines (an export writes
/// its own): a gone client is a broken pipe.
pub(crate) struct SinkWriter<'a>(pub(crate) &'a mut LineSink);

impl std::io::Write for SinkWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.buffer.extend_from_slice(bytes);
        if self.0.buffer.len() >= STREAM_CHUNK_BYTES {
            self.0.flush().map_err(|ClientGone| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
            })?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The client went away: the reader stops.
pub(crate) struct ClientGone;

impl LineSink {
    /// Appends one row as a line; queues the buffer once it holds
    /// [`STREAM_CHUNK_BYTES`], waiting while the queue is full.
    pub(crate) fn push(&mut self, row: &impl serde::Serialize) -> Result<(), ClientGone> {
        serde_json::to_writer(&mut self.buffer, row).expect("operator rows serialise");
        self.buffer.push(b'\n');
        if self.buffer.len() >= STREAM_CHUNK_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ClientGone> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        if self.gone {
            return Err(ClientGone);
        }
        let chunk = std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(STREAM_CHUNK_BYTES + STREAM_ROW_SLACK),
        );
        let streamed = Streamed::Lines(chunk.into());
        let sent = match self.stall_limit {
            None => self.sender.blocking_send(streamed).is_ok(),
            Some(limit) => {
                let sending = tokio::time::timeout(limit, self.sender.send(streamed));
                matches!(self.runtime.block_on(sending), Ok(Ok(())))
            }
        };
        if !sent {
            self.gone = true;
            return Err(ClientGone);
        }
        Ok(())
    }

    /// Queues what is left, then the failure, if any.
    fn finish(mut self, outcome: Result<(), OperatorError>) {
        if self.flush().is_err() {
            return;
        }
        if let Err(error) = outcome {
            let _ = self.sender.blocking_send(Streamed::Failed(error));
        }
    }
}

/// Streams the rows of `rows` as JSON Lines: `rows` runs on a blocking
/// thread and pushes each row into the sink, stopping when the sink says
/// the client went away.
pub(crate) async fn stream_lines(
    rows: impl FnOnce(&mut LineSink) -> Result<(), OperatorError> + Send + 'static,
) -> Response {
    let (sender, mut receiver) = tokio::sync::mpsc::channel(STREAM_QUEUE_CHUNKS);
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut sink = LineSink {
            sender,
            buffer: Vec::with_capacity(STREAM_CHUNK_BYTES + STREAM_ROW_SLACK),
            stall_limit: None,
            runtime,
            gone: false,
        };
        // A panic is a failure the client must see, not a short answer.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rows(&mut sink)))
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".to_owned());
                Err(OperatorError::Failed(anyhow::anyhow!(
                    "internal: reading the ledger panicked: {what}"
                )))
            });
        sink.finish(outcome);
    });
    // Until the first chunk, a failure can still be the answer's status.
    let first = match receiver.recv().await {
        Some(Streamed::Failed(error)) => return ApiError::from(error).into_response(),
        Some(Streamed::Lines(chunk)) => Some(chunk),
        None => None,
    };
    let rest =
        futures::stream::poll_fn(move |context| receiver.poll_recv(context)).map(|streamed| {
            match streamed {
                Streamed::Lines(chunk) => chunk,
                Streamed::Failed(error) => failure_line(&error),
            }
        });
    let body = futures::stream::iter(first)
        .chain(rest)
        .map(Ok::<_, std::convert::Infallible>);
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

/// The last line of an answer that failed after its first line.
pub(crate) fn failure_line(error: &OperatorError) -> axum::body::Bytes {
    let error = match error {
        OperatorError::Refused(message) => message.clone(),
        OperatorError::Failed(error) => format!("{error:#}"),
    };
    let mut line = serde_json::to_vec(&StreamFailure { error }).expect("failures serialise");
    line.push(b'\n');
    line.into()
}

/// An admin API error, as JSON `{"error": "..."}`.
pub(crate) struct ApiError(pub(crate) StatusCode, pub(crate) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<OperatorError> for ApiError {
    fn from(error: OperatorError) -> Self {
        match error {
            OperatorError::Refused(message) => ApiError(StatusCode::BAD_REQUEST, message),
            OperatorError::Failed(error) => {
                ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{error:#}"))
            }
        }
    }
}
