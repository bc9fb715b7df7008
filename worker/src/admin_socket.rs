//! The admin API on a Unix socket, `admin.sock` in the ledger directory
//! (SPEC §11.4, the local operator): operator commands work against a
//! running worker with no admin token configured, for the worker's own OS
//! user and root, and nothing is opened on the network.
//!
//! Two locks on the door: the socket file's mode is 0600 (only its owner,
//! the worker's user, may connect; root may anyway), and every connection's
//! peer credentials (`SO_PEERCRED`, taken by the kernel at `connect`) are
//! checked — a peer of another uid is answered 403 on every request, should
//! the file's mode ever be widened. A request from an accepted peer carries
//! a [`LocalPeer`] extension that the admin API's authorization takes as
//! the operator, named by the peer's OS user in the audit trail. Only this
//! server sets that extension; nothing a client sends can.
//!
//! The socket is created only by the worker that holds the ledger (so the
//! directory is on this machine and no other worker serves it): a stale
//! file left by a crash is replaced at start, and the file is removed when
//! the server stops.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::Extension;
use axum::http::StatusCode;
use axum::response::IntoResponse;

use crate::operators::Operator;
use crate::server::ServerLimits;

/// The socket's file name in the ledger directory.
pub const SOCKET_NAME: &str = "admin.sock";

/// Connections served at once: operators' commands, not a public service.
const MAX_CONNECTIONS: usize = 32;

/// Where a worker whose ledger is at `ledger_dir` listens.
pub fn socket_path(ledger_dir: &Path) -> PathBuf {
    ledger_dir.join(SOCKET_NAME)
}

/// The operator of a request that came over the admin socket from an
/// accepted peer (set by [`serve`] alone).
#[derive(Debug, Clone)]
pub struct LocalPeer(pub Operator);

/// A bound admin socket; its file is removed when it is dropped.
pub struct AdminSocket {
    listener: tokio::net::UnixListener,
    file: SocketFile,
}

/// Removes the socket file when dropped (the server stopped).
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl AdminSocket {
    /// Binds `admin.sock` in `ledger_dir` with mode 0600, replacing a stale
    /// socket file (left by a worker that crashed). Call it only while
    /// holding the ledger: its lock is what says no other worker serves
    /// this directory. Anything but a socket at that path is left alone
    /// and refused.
    pub fn bind(ledger_dir: &Path) -> std::io::Result<AdminSocket> {
        let path = socket_path(ledger_dir);
        match std::fs::symlink_metadata(&path) {
            Ok(metadata) if metadata.file_type().is_socket() => std::fs::remove_file(&path)?,
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("`{}` exists and is not a socket", path.display()),
                ));
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        let listener = tokio::net::UnixListener::bind(&path)?;
        let file = SocketFile(path);
        // The umask leaves others without write permission already (they
        // cannot connect); 0600 takes the group's away too. Peers are
        // checked by uid either way.
        std::fs::set_permissions(&file.0, std::fs::Permissions::from_mode(0o600))?;
        Ok(AdminSocket { listener, file })
    }

    pub fn path(&self) -> &Path {
        &self.file.0
    }
}

/// Binds the admin socket in `ledger_dir` and serves `router` on it until
/// `shutdown` (see [`serve`]). When it cannot be bound (a path longer than
/// a socket address holds, a read-only directory) the worker runs on
/// without it, saying so: its TCP admin API still answers token holders.
pub fn serve_in(
    ledger_dir: &Path,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let bound = AdminSocket::bind(ledger_dir);
    let path = socket_path(ledger_dir);
    async move {
        match bound {
            Ok(socket) => {
                tracing::info!(
                    socket = %socket.path().display(),
                    "Operator commands on this machine reach the worker through its admin socket."
                );
                if let Err(error) = serve(socket, router, shutdown).await {
                    tracing::error!(error = %error, "The admin socket stopped serving.");
                }
            }
            Err(error) => tracing::warn!(
                socket = %path.display(),
                error = %error,
                "The admin socket could not be created: operator commands need the TCP admin API and a token."
            ),
        }
    }
}

/// Whether a peer of uid `peer` may use the admin socket of a worker
/// running as `worker`: the same user, or root.
pub fn peer_allowed(peer: u32, worker: u32) -> bool {
    peer == worker || peer == 0
}

/// Serves `router` on the admin socket over HTTP/1.1 until `shutdown`
/// resolves, then lets requests in flight finish and removes the socket
/// file. Each connection's peer is checked once, when it is accepted.
pub async fn serve(
    socket: AdminSocket,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let AdminSocket { listener, file } = socket;
    let worker_uid = rustix::process::getuid().as_raw();
    let mut shutdown = std::pin::pin!(shutdown);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(ServerLimits::WORKER.header_read_timeout);
    let connections = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(error = %error, "Accepting a connection on the admin socket failed.");
                    tokio::select! {
                        () = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
                        () = &mut shutdown => break,
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = match stream.peer_cred() {
            Ok(peer) if peer_allowed(peer.uid(), worker_uid) => router
                .clone()
                .layer(Extension(LocalPeer(Operator::os_user(peer.uid())))),
            Ok(peer) => {
                tracing::warn!(
                    peer_uid = peer.uid(),
                    peer_pid = peer.pid(),
                    "A process of another OS user connected to the admin socket; its requests are refused."
                );
                refusal(format!(
                    "the admin socket serves only the worker's OS user ({}) and root; {} (uid {}) is refused",
                    Operator::os_user(worker_uid),
                    Operator::os_user(peer.uid()),
                    peer.uid()
                ))
            }
            Err(error) => refusal(format!(
                "the admin socket could not read its peer's credentials: {error}"
            )),
        };
        let service = hyper_util::service::TowerToHyperService::new(service);
        let connection = connections
            .watch(builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %error, "An admin socket connection ended with an error.");
            }
            drop(permit);
        });
    }
    drop(listener);
    connections.shutdown().await;
    drop(file);
    Ok(())
}

/// A router that answers every request 403 with `why`, as the admin API's
/// JSON error.
fn refusal(why: String) -> Router {
    Router::new().fallback(move || {
        let why = why.clone();
        async move {
            (
                StatusCode::FORBIDDEN,
                axum::Json(serde_json::json!({ "error": why })),
            )
                .into_response()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_workers_user_and_root_are_peers() {
        assert!(peer_allowed(1000, 1000));
        assert!(peer_allowed(0, 1000));
        assert!(peer_allowed(0, 0));
        assert!(!peer_allowed(1001, 1000));
        assert!(!peer_allowed(1000, 0));
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_its_mode_is_0600_and_it_goes_when_the_server_stops() {
        let dir = tempfile::tempdir().unwrap();
        // A crashed worker's socket: the file stays, nobody listens.
        drop(std::os::unix::net::UnixListener::bind(socket_path(dir.path())).unwrap());
        assert!(socket_path(dir.path()).exists());
        let socket = AdminSocket::bind(dir.path()).expect("the stale socket is replaced");
        let mode = std::fs::metadata(socket.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let router = Router::new().route("/ping", axum::routing::get(|| async { "pong" }));
        let server = tokio::spawn(serve(socket, router, async move {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::builder()
            .unix_socket(socket_path(dir.path()))
            .build()
            .unwrap();
        let answer = client
            .get("http://palworker/ping")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(answer, "pong");
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
        assert!(!socket_path(dir.path()).exists(), "removed on stop");
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_socket_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(socket_path(dir.path()), "mine").unwrap();
        let refused = AdminSocket::bind(dir.path()).err().expect("refused");
        assert_eq!(refused.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(
            std::fs::read_to_string(socket_path(dir.path())).unwrap(),
            "mine"
        );
    }
}
