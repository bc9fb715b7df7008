//! What a harness's parts show: the actions of an event in the ledger, the
//! simulator's request log (per identity, writes, answered writes), the
//! links of generated identities, readiness, and samples of the Prometheus
//! text. Read-only: nothing here changes the worker, the simulator or the
//! ledger.

use std::collections::BTreeMap;
use std::time::Duration;

use palworker_core::{ActionRecord, StatusFilter};
use palworker_sim::RequestRecord;

use super::{Harness, identities};

impl Harness {
    /// The actions of the event with CloudEvent id `event_id`, in creation order.
    ///
    /// # Panics
    /// When the worker is not running or its ledger cannot be read.
    pub fn actions_of(&self, event_id: &str) -> Vec<ActionRecord> {
        self.app()
            .ledger
            .actions(&StatusFilter {
                event_id: Some(event_id.to_owned()),
                ..StatusFilter::default()
            })
            .expect("ledger readable")
    }

    /// The single action of the event with CloudEvent id `event_id`.
    ///
    /// # Panics
    /// When the event has no action or more than one (and as [`Harness::actions_of`]).
    pub fn action_of(&self, event_id: &str) -> ActionRecord {
        let mut actions = self.actions_of(event_id);
        assert_eq!(actions.len(), 1, "event {event_id} should have one action");
        actions.remove(0)
    }

    /// ARM requests of one identity, in arrival order.
    pub fn requests_of(&self, tenant_id: &str, object_id: &str) -> Vec<RequestRecord> {
        self.simulator
            .requests()
            .into_iter()
            .filter(|r| {
                r.tenant_id.as_deref() == Some(tenant_id)
                    && r.object_id.as_deref() == Some(object_id)
            })
            .collect()
    }

    /// Write requests (PUT, PATCH, DELETE) PAL answered with 200 so far.
    pub fn answered_writes(&self) -> usize {
        self.simulator
            .requests()
            .iter()
            .filter(|r| is_write(r) && r.status == 200)
            .count()
    }

    /// The partner ID of the active link of employee `e`'s identity in
    /// tenant `t` ([`identities`]), if PAL has one.
    pub fn linked(&self, e: usize, t: usize) -> Option<String> {
        self.simulator
            .active_link(&identities::tenant(t), &identities::object(e, t))
            .map(|l| l.partner_id)
    }

    /// The HTTP status of the running worker's `/readyz`.
    pub async fn readyz(&self) -> anyhow::Result<u16> {
        let response = reqwest::get(format!("http://{}/readyz", self.app().http_addr)).await?;
        Ok(response.status().as_u16())
    }

    /// Polls `/readyz` and the `palworker_amqp_connected` gauge until they
    /// show `status` and `gauge`. An HTTP error ends the wait.
    pub async fn wait_for_readiness(
        &self,
        timeout: Duration,
        status: u16,
        gauge: i64,
    ) -> anyhow::Result<()> {
        super::wait_until_async(
            timeout,
            &format!("/readyz {status} and palworker_amqp_connected {gauge}"),
            async || {
                Ok(self.readyz().await? == status && self.app().metrics.amqp_connected() == gauge)
            },
        )
        .await
    }
}

/// Whether a request writes (PUT, PATCH, DELETE).
pub fn is_write(request: &RequestRecord) -> bool {
    matches!(request.method.as_str(), "PUT" | "PATCH" | "DELETE")
}

/// The identity (tenant id, object id) a request was made as (empty strings
/// for a request without a valid token).
pub fn request_identity(request: &RequestRecord) -> (String, String) {
    (
        request.tenant_id.clone().unwrap_or_default(),
        request.object_id.clone().unwrap_or_default(),
    )
}

/// The write requests (PUT, PATCH, DELETE, whatever their answer) per identity.
pub fn writes_per_identity(requests: &[RequestRecord]) -> BTreeMap<(String, String), usize> {
    let mut writes = BTreeMap::new();
    for request in requests.iter().filter(|r| is_write(r)) {
        *writes.entry(request_identity(request)).or_insert(0) += 1;
    }
    writes
}

/// The value of one sample line of the Prometheus text (`name{labels} value`);
/// `None` when there is no such series (or its value is not a number).
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::sample;

    #[test]
    fn a_sample_is_found_by_its_whole_series() {
        let text = "# TYPE x counter\nx{a=\"1\"} 2\nx{a=\"10\"} 3\nx_count 4\n";
        assert_eq!(sample(text, r#"x{a="1"}"#), Some(2.0));
        assert_eq!(sample(text, r#"x{a="10"}"#), Some(3.0));
        assert_eq!(sample(text, "x_count"), Some(4.0));
        assert_eq!(sample(text, "x"), None);
    }
}
