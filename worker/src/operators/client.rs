//! The CLI's client of a running worker's admin API (`/admin/…` on
//! `http.listen`): the operator commands, sent to the worker that holds the
//! ledger. It talks to palworker itself, not to PAL.
//!
//! Long answers (`status`, `audit export`) arrive as JSON Lines and are read
//! a chunk at a time, each row handed on as soon as its line is complete; an
//! import is sent a batch of accounts per request.

use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use palworker_core::{
    ActionId, AuditEntry, Finding, InventoryEntry, ReconcileReport, ReleaseSummary, StatusFilter,
    StatusRow,
};
use palworker_events::{Account, ImportedAccount, PartnerId};
use reqwest::{Method, RequestBuilder, Response, StatusCode, header};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{
    AuditCheck, Decision, EventRef, IMPORT_BATCH_ACCOUNTS, IMPORT_BATCH_BYTES, Operations,
    OperatorError, PauseAnswer, RetryTarget, StreamFailure,
};
use crate::ledger::PauseState;
use crate::ledger::RevocationRow;
use crate::reconcile::{ReconcileLine, ReconcileRequest};

/// How long the client waits for the next bytes of an answer. Not a bound
/// on the whole answer: a long `status` stream may take minutes, but it
/// never stalls this long.
const READ_TIMEOUT: Duration = Duration::from_secs(300);

/// How the last line of a ledger export starts (`ledger::export`).
const EXPORT_END_START: &[u8] = b"{\"palworker_ledger_end\":";

/// How much of an error answer that is not the API's JSON (a proxy's page,
/// a body-limit refusal) is quoted.
const QUOTED_ERROR_CHARS: usize = 200;

/// Why the CLI went to the admin API rather than the ledger: said when the
/// API does not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reached {
    /// A running worker holds the ledger.
    LedgerInUse,
    /// There is no ledger at this path on this machine (a backup job, an
    /// operator's workstation): the worker must be elsewhere.
    NoLocalLedger(std::path::PathBuf),
    /// One partition of a partitioned deployment (`partitions.admin_urls`).
    Partition(String),
}

/// A running worker's admin API.
pub struct AdminApiClient {
    http: reqwest::Client,
    base: String,
    /// Where the API is, as error messages name it.
    endpoint: String,
    token: Option<SecretString>,
    reached: Reached,
}

impl AdminApiClient {
    pub fn new(
        listen: SocketAddr,
        token: Option<SecretString>,
        reached: Reached,
    ) -> anyhow::Result<Self> {
        // A worker listening on all interfaces is reached on loopback.
        let host = if listen.ip().is_unspecified() {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), listen.port())
        } else {
            listen
        };
        Ok(AdminApiClient {
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .read_timeout(READ_TIMEOUT)
                .build()?,
            base: format!("http://{host}"),
            endpoint: format!("http://{host}"),
            token,
            reached,
        })
    }

    /// The admin API at `url` (a partition's, from `partitions.admin_urls`).
    pub fn at_url(
        url: &url::Url,
        token: Option<SecretString>,
        reached: Reached,
    ) -> anyhow::Result<Self> {
        let base = url.as_str().trim_end_matches('/').to_owned();
        Ok(AdminApiClient {
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .read_timeout(READ_TIMEOUT)
                .build()?,
            endpoint: base.clone(),
            base,
            token,
            reached,
        })
    }

    /// The admin API of the worker on this machine, through its admin
    /// socket (`admin_socket`): no token; the worker knows who connects.
    pub fn over_socket(socket: &std::path::Path, reached: Reached) -> anyhow::Result<Self> {
        Ok(AdminApiClient {
            http: reqwest::Client::builder()
                .unix_socket(socket)
                .connect_timeout(Duration::from_secs(5))
                .read_timeout(READ_TIMEOUT)
                .build()?,
            // The host is not used to connect; it is the request's `Host`.
            base: "http://localhost".to_owned(),
            endpoint: format!("the socket `{}`", socket.display()),
            token: None,
            reached,
        })
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose_secret());
        }
        request
    }

    /// Sends a request; an answer other than 2xx is an error with the API's
    /// reason (400: [`OperatorError::Refused`]).
    async fn send(&self, request: RequestBuilder) -> Result<Response, OperatorError> {
        let response = request.send().await.map_err(|e| match &self.reached {
            Reached::LedgerInUse => anyhow::anyhow!(
                "the ledger is in use by a running worker, and its admin API at {} did not answer: {e}",
                self.endpoint
            ),
            Reached::Partition(partition) => anyhow::anyhow!(
                "partition {partition}'s admin API at {} did not answer: {e}",
                self.endpoint
            ),
            Reached::NoLocalLedger(path) => anyhow::anyhow!(
                "there is no ledger at `{}` on this machine, and no worker's admin API answered at {}: {e}",
                path.display(),
                self.endpoint
            ),
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = response.bytes().await.unwrap_or_default();
        let text = format!(
            "the worker's admin API answered {}: {}",
            status.as_u16(),
            error_reason(status, &body)
        );
        Err(if status == StatusCode::BAD_REQUEST {
            OperatorError::Refused(text)
        } else {
            OperatorError::Failed(anyhow::anyhow!(text))
        })
    }

    async fn json<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T, OperatorError> {
        let response = self.send(request).await?;
        response
            .json()
            .await
            .map_err(|e| OperatorError::Failed(anyhow::anyhow!("unreadable admin API answer: {e}")))
    }
}

/// Why the admin API refused: its `{"error": …}` text, else the start of
/// whatever body came (axum's body-limit refusal is plain text), else the
/// status's own name — never nothing.
fn error_reason(status: StatusCode, body: &[u8]) -> String {
    if let Ok(failure) = serde_json::from_slice::<StreamFailure>(body) {
        return failure.error;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if !text.is_empty() {
        let mut quoted: String = text
            .chars()
            .take(QUOTED_ERROR_CHARS)
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if text.chars().count() > QUOTED_ERROR_CHARS {
            quoted.push('…');
        }
        return quoted;
    }
    status
        .canonical_reason()
        .unwrap_or("no reason given")
        .to_owned()
}

/// Reads a JSON Lines answer as it arrives, handing each row to `visit`. A
/// failure line ([`StreamFailure`]: the worker failed after it began to
/// answer) is an error, and so is an answer cut off mid-way.
pub(crate) async fn read_lines<T: DeserializeOwned>(
    response: Response,
    visit: &mut dyn FnMut(T) -> anyhow::Result<()>,
) -> Result<(), OperatorError> {
    read_raw_lines(response, &mut |line: &[u8]| {
        let row = serde_json::from_slice(line)
            .map_err(|e| anyhow::anyhow!("unreadable admin API line: {e}"))?;
        visit(row)
    })
    .await
}

/// Reads a JSON Lines answer as it arrives, handing each non-blank line
/// (without its newline) to `visit`; a failure line or an answer cut off
/// mid-way is an error.
async fn read_raw_lines(
    mut response: Response,
    visit: &mut dyn FnMut(&[u8]) -> anyhow::Result<()>,
) -> Result<(), OperatorError> {
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let chunk = response.chunk().await.map_err(|e| {
            OperatorError::Failed(anyhow::anyhow!(
                "the worker's answer broke off: {e} (what was written so far is incomplete)"
            ))
        })?;
        let Some(chunk) = chunk else {
            break;
        };
        pending.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(end) = pending[start..].iter().position(|&b| b == b'\n') {
            read_line(&pending[start..start + end], visit)?;
            start += end + 1;
        }
        pending.drain(..start);
    }
    read_line(&pending, visit)
}

/// One line of a JSON Lines answer (blank: nothing).
fn read_line(
    line: &[u8],
    visit: &mut dyn FnMut(&[u8]) -> anyhow::Result<()>,
) -> Result<(), OperatorError> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    if line.starts_with(StreamFailure::LINE_START) {
        let reason = serde_json::from_slice::<StreamFailure>(line)
            .map(|failure| failure.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(line).into_owned());
        return Err(OperatorError::Failed(anyhow::anyhow!(
            "the worker failed while answering: {reason} (what was written so far is incomplete)"
        )));
    }
    visit(line)?;
    Ok(())
}

/// One account as a line of a JSON Lines import file.
#[derive(Serialize)]
struct ImportLine<'a> {
    #[serde(flatten)]
    account: &'a Account,
    #[serde(skip_serializing_if = "Option::is_none")]
    partner_id: Option<&'a PartnerId>,
}

/// The accounts as JSON Lines bodies of at most [`IMPORT_BATCH_ACCOUNTS`]
/// accounts and (unless one account alone is longer) [`IMPORT_BATCH_BYTES`].
fn import_batches(accounts: &[ImportedAccount]) -> impl Iterator<Item = (usize, Vec<u8>)> + '_ {
    let mut rest = accounts;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut body = Vec::new();
        let mut count = 0;
        for row in rest.iter().take(IMPORT_BATCH_ACCOUNTS) {
            let mut line = serde_json::to_vec(&ImportLine {
                account: &row.account,
                partner_id: row.partner_id.as_ref(),
            })
            .expect("accounts serialise");
            line.push(b'\n');
            if count > 0 && body.len() + line.len() > IMPORT_BATCH_BYTES {
                break;
            }
            body.extend_from_slice(&line);
            count += 1;
        }
        rest = &rest[count..];
        Some((count, body))
    })
}

impl Operations for AdminApiClient {
    async fn status(
        &self,
        filter: &StatusFilter,
        visit: &mut dyn FnMut(StatusRow) -> anyhow::Result<()>,
    ) -> Result<(), OperatorError> {
        let response = self
            .send(self.request(Method::GET, "/admin/status").query(filter))
            .await?;
        read_lines(response, visit).await
    }

    async fn retry(&self, target: RetryTarget) -> Result<Vec<ActionId>, OperatorError> {
        let body = match target {
            RetryTarget::Action(id) => serde_json::json!({ "action": id }),
            RetryTarget::AllFailed => serde_json::json!({ "failed": true }),
        };
        let answer: serde_json::Value = self
            .json(self.request(Method::POST, "/admin/retry").json(&body))
            .await?;
        serde_json::from_value(answer["retried"].clone())
            .map_err(|e| OperatorError::Failed(anyhow::anyhow!("unreadable retry answer: {e}")))
    }

    async fn decide(
        &self,
        decision: Decision,
        event: &EventRef,
    ) -> Result<ReleaseSummary, OperatorError> {
        let path = format!("/admin/{}", decision.as_str());
        self.json(self.request(Method::POST, &path).json(event))
            .await
    }

    async fn audit(
        &self,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        visit: &mut dyn FnMut(AuditEntry) -> anyhow::Result<()>,
    ) -> Result<(), OperatorError> {
        let mut query = Vec::new();
        if let Some(since) = since {
            query.push(("since", since.to_rfc3339()));
        }
        if let Some(until) = until {
            query.push(("until", until.to_rfc3339()));
        }
        let response = self
            .send(self.request(Method::GET, "/admin/audit").query(&query))
            .await?;
        read_lines(response, visit).await
    }

    async fn verify_audit(&self) -> Result<AuditCheck, OperatorError> {
        self.json(self.request(Method::GET, "/admin/audit/verify"))
            .await
    }

    async fn set_pause(&self, state: PauseState) -> Result<PauseAnswer, OperatorError> {
        let path = match state {
            PauseState::Paused => "/admin/pause",
            PauseState::Running => "/admin/resume",
        };
        self.json(self.request(Method::POST, path)).await
    }

    /// The worker writes the snapshot as it reads it; the bytes are copied
    /// to `out` as they arrive. A failure after the first bytes arrives as
    /// a last `{"error": …}` line, which is not copied.
    async fn export_ledger(
        &self,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<u64, OperatorError> {
        let response = self
            .send(self.request(Method::GET, "/admin/ledger/export"))
            .await?;
        // The export's last line says how many records it holds; without
        // it the answer was cut off (`ledger import` would refuse the file).
        let mut ended: Option<u64> = None;
        read_raw_lines(response, &mut |line: &[u8]| {
            out.write_all(line)?;
            out.write_all(b"\n")?;
            if line.starts_with(EXPORT_END_START) {
                let end: serde_json::Value = serde_json::from_slice(line)?;
                ended = end["palworker_ledger_end"].as_u64();
            }
            Ok(())
        })
        .await?;
        out.flush().map_err(anyhow::Error::from)?;
        ended.ok_or_else(|| {
            OperatorError::Failed(anyhow::anyhow!(
                "the worker's export ended without its end line: it was cut off (the file is incomplete)"
            ))
        })
    }

    async fn inventory(
        &self,
        employee: Option<&str>,
        tenant: Option<&str>,
    ) -> Result<Vec<InventoryEntry>, OperatorError> {
        let mut query = Vec::new();
        if let Some(employee) = employee {
            query.push(("employee", employee));
        }
        if let Some(tenant) = tenant {
            query.push(("tenant", tenant));
        }
        self.json(self.request(Method::GET, "/admin/inventory").query(&query))
            .await
    }

    /// Sends the accounts a batch per request, in file order. Importing is
    /// an upsert, so after a failure the whole file can simply be sent again;
    /// the error says how far the import got.
    async fn import(&self, accounts: Vec<ImportedAccount>) -> Result<u64, OperatorError> {
        let total = accounts.len();
        let mut sent = 0usize;
        let mut imported = 0u64;
        for (count, body) in import_batches(&accounts) {
            let answer: Result<serde_json::Value, _> = self
                .json(
                    self.request(Method::POST, "/admin/inventory")
                        .header(header::CONTENT_TYPE, "application/x-ndjson")
                        .body(body),
                )
                .await;
            let answer = answer.map_err(|error| {
                let progress = format!(
                    "{sent} of {total} account(s) were imported before; importing the file again is safe"
                );
                match error {
                    OperatorError::Refused(message) => {
                        OperatorError::Refused(format!("{message} ({progress})"))
                    }
                    OperatorError::Failed(error) => {
                        OperatorError::Failed(anyhow::anyhow!("{error:#} ({progress})"))
                    }
                }
            })?;
            imported += answer["imported"].as_u64().unwrap_or(0);
            sent += count;
        }
        Ok(imported)
    }

    async fn plan(&self, event: Vec<u8>) -> Result<serde_json::Value, OperatorError> {
        self.json(self.request(Method::POST, "/admin/plan").body(event))
            .await
    }

    async fn reconcile(
        &self,
        request: &ReconcileRequest,
        visit: &mut dyn FnMut(Finding) -> anyhow::Result<()>,
    ) -> Result<ReconcileReport, OperatorError> {
        let response = self
            .send(self.request(Method::POST, "/admin/reconcile").json(request))
            .await?;
        let mut report = None;
        read_lines(response, &mut |line: ReconcileLine| match line {
            ReconcileLine::Finding(finding) => visit(finding),
            ReconcileLine::Report(last) => {
                report = Some(*last);
                Ok(())
            }
        })
        .await?;
        report.ok_or_else(|| {
            OperatorError::Failed(anyhow::anyhow!(
                "the worker's reconcile answer ended without its report"
            ))
        })
    }

    async fn revocations(
        &self,
        since: Option<DateTime<Utc>>,
        visit: &mut dyn FnMut(RevocationRow) -> anyhow::Result<()>,
    ) -> Result<(), OperatorError> {
        let query: Vec<(&str, String)> = since
            .map(|since| ("since", since.to_rfc3339()))
            .into_iter()
            .collect();
        let response = self
            .send(
                self.request(Method::GET, "/admin/report/revocations")
                    .query(&query),
            )
            .await?;
        read_lines(response, visit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accounts(count: usize, employee_len: usize) -> Vec<ImportedAccount> {
        let text: String = (0..count)
            .map(|i| {
                format!(
                    "{{\"tenant_id\":\"11111111-1111-4111-8111-111111111111\",\"object_id\":\"{:08x}-0000-4000-8000-000000000000\",\"employee_id\":\"E-{}{}\",\"credential\":\"sp\",\"partner_id\":\"123\"}}\n",
                    i,
                    "x".repeat(employee_len),
                    i
                )
            })
            .collect();
        palworker_events::parse_import(&text).expect("valid accounts")
    }

    #[test]
    fn import_batches_respect_both_limits_and_reparse_to_the_same_accounts() {
        for (count, employee_len) in [(12_345, 0), (3_000, 60), (1, 0)] {
            let rows = accounts(count, employee_len);
            let mut reparsed = Vec::new();
            let mut batches = 0;
            for (batch_count, body) in import_batches(&rows) {
                batches += 1;
                assert!(batch_count <= IMPORT_BATCH_ACCOUNTS);
                assert!(body.len() <= IMPORT_BATCH_BYTES, "{} bytes", body.len());
                let text = String::from_utf8(body).unwrap();
                let batch = palworker_events::parse_import(&text).expect("a batch re-parses");
                assert_eq!(batch.len(), batch_count);
                reparsed.extend(batch);
            }
            assert_eq!(reparsed, rows);
            assert!(batches >= count.div_ceil(IMPORT_BATCH_ACCOUNTS));
        }
        assert_eq!(import_batches(&[]).count(), 0);
    }

    #[test]
    fn an_error_answer_always_gives_a_reason() {
        assert_eq!(
            error_reason(StatusCode::BAD_REQUEST, br#"{"error":"no accepted event"}"#),
            "no accepted event"
        );
        assert_eq!(
            error_reason(
                StatusCode::PAYLOAD_TOO_LARGE,
                b"Failed to buffer the request body: length limit exceeded"
            ),
            "Failed to buffer the request body: length limit exceeded"
        );
        assert_eq!(
            error_reason(StatusCode::PAYLOAD_TOO_LARGE, b""),
            "Payload Too Large"
        );
        let long = "y".repeat(1_000);
        let quoted = error_reason(StatusCode::BAD_GATEWAY, long.as_bytes());
        assert_eq!(quoted.chars().count(), QUOTED_ERROR_CHARS + 1);
    }
}
