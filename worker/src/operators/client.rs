//! The CLI's client of a running worker's admin API (`/admin/…` on
//! `http.listen`): the operator commands, sent to the worker that holds the
//! ledger. It talks to palworker itself, not to PAL.

use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use palworker_core::{
    ActionId, AuditRecord, InventoryEntry, ReleaseSummary, StatusFilter, StatusRow,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;

use super::{Decision, EventRef, Operations, OperatorError, RetryTarget};

/// A running worker's admin API.
pub struct AdminApiClient {
    http: reqwest::Client,
    base: String,
    token: Option<SecretString>,
}

impl AdminApiClient {
    pub fn new(listen: SocketAddr, token: Option<SecretString>) -> anyhow::Result<Self> {
        // A worker listening on all interfaces is reached on loopback.
        let host = if listen.ip().is_unspecified() {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), listen.port())
        } else {
            listen
        };
        Ok(AdminApiClient {
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(300))
                .build()?,
            base: format!("http://{host}"),
            token,
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
    /// `{"error": …}` text (400: [`OperatorError::Refused`]).
    async fn send(&self, request: RequestBuilder) -> Result<Response, OperatorError> {
        let response = request.send().await.map_err(|e| {
            anyhow::anyhow!(
                "the ledger is in use by a running worker, and its admin API at {} did not answer: {e}",
                self.base
            )
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let message = body
            .get("error")
            .and_then(|e| e.as_str())
            .unwrap_or("no detail");
        let text = format!(
            "the worker's admin API answered {}: {message}",
            status.as_u16()
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

impl Operations for AdminApiClient {
    async fn status(
        &self,
        filter: &StatusFilter,
        visit: &mut dyn FnMut(StatusRow) -> anyhow::Result<()>,
    ) -> Result<(), OperatorError> {
        let rows: Vec<StatusRow> = self
            .json(self.request(Method::GET, "/admin/status").query(filter))
            .await?;
        for row in rows {
            visit(row)?;
        }
        Ok(())
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
        visit: &mut dyn FnMut(AuditRecord) -> anyhow::Result<()>,
    ) -> Result<(), OperatorError> {
        let mut request = self.request(Method::GET, "/admin/audit");
        if let Some(since) = since {
            request = request.query(&[("since", since.to_rfc3339())]);
        }
        let text = self
            .send(request)
            .await?
            .text()
            .await
            .map_err(|e| OperatorError::Failed(e.into()))?;
        for line in text.lines().filter(|line| !line.trim().is_empty()) {
            let record: AuditRecord = serde_json::from_str(line).map_err(|e| {
                OperatorError::Failed(anyhow::anyhow!("unreadable audit line: {e}"))
            })?;
            visit(record)?;
        }
        Ok(())
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

    async fn import(&self, text: String) -> Result<u64, OperatorError> {
        let answer: serde_json::Value = self
            .json(self.request(Method::POST, "/admin/inventory").body(text))
            .await?;
        Ok(answer["imported"].as_u64().unwrap_or(0))
    }

    async fn plan(&self, event: Vec<u8>) -> Result<serde_json::Value, OperatorError> {
        self.json(self.request(Method::POST, "/admin/plan").body(event))
            .await
    }
}
