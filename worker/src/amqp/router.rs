//! `palworker route` (SPEC §10): the stateless router. It consumes the
//! events queue (any number of replicas compete for it), validates each
//! delivery as `run` does — bad input is dead-lettered with the same
//! reasons — and publishes a copy of each valid event to every partition
//! it concerns, on the direct exchange `{exchange}.partitions` with routing
//! key `p{i}`, mandatory and with publisher confirms. It acknowledges a
//! delivery only when every copy is confirmed; a copy the broker refuses
//! or cannot route (a partition queue missing) is published again after a
//! growing pause ([`refused_copy_delay`]) while the delivery stays
//! unacknowledged. A router killed
//! between a copy and its ack loses nothing: the delivery comes back, the
//! copies are published again, and each partition's ledger drops the
//! duplicate by `(source, id)`.
//!
//! A copy carries the original body, content type and headers, plus the
//! original routing key and the original AMQP `user_id` in
//! [`PUBLISHER_HEADER`]; its own `user_id` is the router's broker user, so
//! a partition can tell the router's copies from anyone else's.
//!
//! The same invariant as the consumer's: a delivery is acknowledged only
//! on the channel it came on; a session that fails drops its deliveries
//! (the broker redelivers them) and the next session starts from scratch.

use std::str::FromStr;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};
use palworker_config::{AmqpSettings, PartitionSettings};
use palworker_events::{Event, PartitionCount, PartitionIndex};
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::intake::{Checked, Disposition, Incoming, Validator};
use crate::telemetry::{
    BrokerConnectionChanged, ConsumerStopped, EventRouted, Metrics, RouterStarted,
};

use super::consumer::dead_letter;
use super::partitions::PUBLISHER_HEADER;
use super::{Topology, connect, declare_topology, reconnect_schedule};

/// Routes the events queue to the partition queues.
pub struct Router {
    settings: AmqpSettings,
    topology: Topology,
    count: PartitionCount,
    /// The broker user this router connects as: the `user_id` of its copies.
    user: String,
    validator: Validator,
    metrics: Metrics,
    health: Health,
}

/// A valid delivery whose copies are not all confirmed yet.
struct Routing {
    delivery: Delivery,
    event: Event,
    /// The original publisher, forwarded in [`PUBLISHER_HEADER`].
    publisher: Option<String>,
    /// Every partition the event goes to.
    partitions: Vec<PartitionIndex>,
    /// Those whose copy is not confirmed yet.
    unconfirmed: Vec<PartitionIndex>,
    /// Times a copy was refused so far.
    refusals: u32,
}

/// What the broker said of a delivery's copies.
enum Routed {
    /// Every copy confirmed: acknowledge.
    Confirmed,
    /// These partitions' copies were refused or had no queue bound.
    Refused {
        partitions: Vec<PartitionIndex>,
        why: String,
    },
}

/// The wait before publishing refused copies again, after `refusals`
/// refusals: 100 ms doubling up to `max`. The delivery stays
/// unacknowledged meanwhile — returning it to the queue would count
/// towards the queue's delivery limit and dead-letter a good event
/// because a partition queue is missing for a while.
pub fn refused_copy_delay(refusals: u32, max: std::time::Duration) -> std::time::Duration {
    let base = std::time::Duration::from_millis(100);
    base.saturating_mul(1u32 << refusals.saturating_sub(1).min(16))
        .min(max)
}

impl Router {
    pub fn new(
        settings: AmqpSettings,
        partitions: &PartitionSettings,
        validator: Validator,
        metrics: Metrics,
        health: Health,
    ) -> anyhow::Result<Self> {
        let uri = lapin::uri::AMQPUri::from_str(settings.url.expose())
            .map_err(|_| anyhow::anyhow!("amqp.url is not a URL the AMQP client can use"))?;
        Ok(Router {
            topology: Topology::for_router(&settings, partitions),
            count: partitions.count,
            user: uri.authority.userinfo.username,
            settings,
            validator,
            metrics,
            health,
        })
    }

    /// Routes until `shutdown` is cancelled, reconnecting with backoff
    /// whenever the connection or a channel fails.
    pub async fn run(self, shutdown: CancellationToken) {
        RouterStarted { count: self.count }.emit(&self.metrics);
        let mut delays = reconnect_schedule(&self.settings);
        while !shutdown.is_cancelled() {
            let started = std::time::Instant::now();
            let result = self.session(&shutdown).await;
            self.health.broker_connected.store(false, Ordering::SeqCst);
            ConsumerStopped.emit(&self.metrics);
            let Err(error) = result else { break };
            if started.elapsed() >= self.settings.reconnect_max {
                delays = reconnect_schedule(&self.settings);
            }
            let delay = delays.next().unwrap_or(self.settings.reconnect_max);
            BrokerConnectionChanged::Down {
                detail: &format!("{error:#}; retrying in {} ms", delay.as_millis()),
            }
            .emit(&self.metrics);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => break,
            }
        }
    }

    /// One connection's life: declare, consume, route, until shutdown
    /// (`Ok`) or a failure.
    async fn session(&self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let connection = connect(self.settings.url.expose(), "palworker-router").await?;
        declare_topology(&connection, &self.topology, self.settings.declare).await?;
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(self.settings.prefetch, BasicQosOptions::default())
            .await?;
        // Dead letters on a channel with confirms, and the copies on one
        // channel with confirms per partition: the broker returns an
        // unroutable mandatory copy ahead of its confirm, and the client
        // hands a return to whichever confirm of the channel comes next —
        // with every copy of a channel bound for the same queue, a return
        // can only be taken for a copy that was as unroutable.
        let dead_letters = connection.create_channel().await?;
        dead_letters
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let mut out = Vec::with_capacity(self.count.get() as usize);
        for _ in self.count.all() {
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            out.push(channel);
        }
        let tag = format!("palworker-router-{}", uuid::Uuid::new_v4());
        let mut consumer = channel
            .basic_consume(
                self.topology.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        if !self.health.broker_connected.swap(true, Ordering::SeqCst) {
            BrokerConnectionChanged::Up.emit(&self.metrics);
        }
        let mut confirming = FuturesUnordered::new();
        let mut waiting = FuturesUnordered::new();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    // Settle what is published; the rest — deliveries not
                    // routed yet, or waiting to publish a refused copy
                    // again — returns to the queue when the channel closes.
                    while let Some((routing, routed)) = confirming.next().await {
                        let _unacked_returns_to_the_queue = self.settle(routing, routed?).await?;
                    }
                    let _ = channel.close(200, "palworker router shutting down".into()).await;
                    let _ = connection.close(200, "palworker router shutting down".into()).await;
                    return Ok(());
                }
                Some((routing, routed)) = confirming.next(), if !confirming.is_empty() => {
                    if let Some(routing) = self.settle(routing, routed?).await? {
                        let delay = refused_copy_delay(routing.refusals, self.settings.reconnect_max);
                        waiting.push(async move {
                            tokio::time::sleep(delay).await;
                            routing
                        });
                    }
                }
                Some(routing) = waiting.next(), if !waiting.is_empty() => {
                    confirming.push(self.publish(&out, routing).await?);
                }
                next = consumer.next() => {
                    let delivery = match next {
                        Some(delivery) => delivery?,
                        None => anyhow::bail!("the broker ended the router's consumer"),
                    };
                    match self.check(&delivery) {
                        Checked::Valid { event, publisher } => {
                            let partitions = self.count.of_event(&event);
                            let routing = Routing {
                                delivery,
                                event,
                                publisher,
                                unconfirmed: partitions.clone(),
                                partitions,
                                refusals: 0,
                            };
                            confirming.push(self.publish(&out, routing).await?);
                        }
                        Checked::Rejected(rejection) => {
                            if let Disposition::DeadLetter { detail, .. } =
                                rejection.dead_lettered(&self.metrics)
                            {
                                dead_letter(
                                    &dead_letters,
                                    &self.topology.dead_letter_exchange,
                                    &delivery,
                                    &detail,
                                )
                                .await?;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Validates a delivery as `run` would, with its own `user_id`.
    fn check(&self, delivery: &Delivery) -> Checked {
        self.validator.check(Incoming {
            body: &delivery.data,
            content_type: delivery
                .properties
                .content_type()
                .as_ref()
                .map(|s| s.as_str()),
            user_id: delivery.properties.user_id().as_ref().map(|s| s.as_str()),
        })
    }

    /// Publishes the copies `routing` still owes; a future of the broker's
    /// confirmations.
    async fn publish(
        &self,
        out: &[Channel],
        routing: Routing,
    ) -> lapin::Result<impl Future<Output = (Routing, lapin::Result<Routed>)> + use<>> {
        let confirms = self
            .publish_copies(
                out,
                &routing.delivery,
                routing.publisher.as_deref(),
                &routing.unconfirmed,
            )
            .await?;
        Ok(async move {
            let routed = confirmed(confirms, &routing.unconfirmed).await;
            (routing, routed)
        })
    }

    /// Publishes one copy of `delivery` per partition (mandatory); the
    /// confirmations to wait for, in partition order.
    async fn publish_copies(
        &self,
        out: &[Channel],
        delivery: &Delivery,
        publisher: Option<&str>,
        partitions: &[PartitionIndex],
    ) -> lapin::Result<Vec<PublisherConfirm>> {
        // The original headers but one: only the router says who
        // published, so a header the publisher set itself is dropped.
        let mut headers = match delivery.properties.headers() {
            Some(original) if original.contains_key(PUBLISHER_HEADER) => {
                let mut fields = original.inner().clone();
                fields.remove(PUBLISHER_HEADER);
                FieldTable::from(fields)
            }
            Some(original) => original.clone(),
            None => FieldTable::default(),
        };
        if let Some(publisher) = publisher {
            headers.insert(
                PUBLISHER_HEADER.into(),
                AMQPValue::LongString(publisher.into()),
            );
        }
        headers.insert(
            "x-palworker-routing-key".into(),
            AMQPValue::LongString(delivery.routing_key.as_str().into()),
        );
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_user_id(self.user.as_str().into())
            .with_headers(headers);
        if let Some(content_type) = delivery.properties.content_type() {
            properties = properties.with_content_type(content_type.clone());
        }
        if let Some(message_id) = delivery.properties.message_id() {
            properties = properties.with_message_id(message_id.clone());
        }
        let exchange = self
            .topology
            .partitions
            .as_ref()
            .map(|partitions| partitions.exchange.as_str())
            .unwrap_or_default();
        let mut confirms = Vec::with_capacity(partitions.len());
        for partition in partitions {
            confirms.push(
                out[partition.get() as usize]
                    .basic_publish(
                        exchange.into(),
                        partition.routing_key().as_str().into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        &delivery.data,
                        properties.clone(),
                    )
                    .await?,
            );
        }
        Ok(confirms)
    }

    /// Acknowledges a delivery whose copies are all confirmed; else gives
    /// it back to publish the refused copies again later.
    async fn settle(&self, mut routing: Routing, routed: Routed) -> lapin::Result<Option<Routing>> {
        match routed {
            Routed::Confirmed => {
                routing
                    .delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await?;
                EventRouted {
                    event: &routing.event,
                    partitions: &routing.partitions,
                }
                .emit(&self.metrics);
                Ok(None)
            }
            Routed::Refused { partitions, why } => {
                routing.refusals += 1;
                tracing::error!(
                    event_id = %routing.event.escaped_id(),
                    reason = %why,
                    refusals = routing.refusals,
                    "A partition did not take its copy; it is published again after a pause \
                     (is every partition queue declared and bound? `palworker topology`)."
                );
                routing.unconfirmed = partitions;
                Ok(Some(routing))
            }
        }
    }
}

/// Waits for every copy's confirmation.
async fn confirmed(
    confirms: Vec<PublisherConfirm>,
    partitions: &[PartitionIndex],
) -> lapin::Result<Routed> {
    let mut refused = Vec::new();
    let mut reason = None;
    for (confirm, partition) in confirms.into_iter().zip(partitions) {
        let why = match confirm.await? {
            Confirmation::Ack(None) => continue,
            Confirmation::Ack(Some(_)) => format!("no queue is bound for partition {partition}"),
            Confirmation::Nack(_) => format!("the broker refused the copy for {partition}"),
            Confirmation::NotRequested => {
                format!("no confirmation for {partition} (confirms are off)")
            }
        };
        refused.push(*partition);
        reason.get_or_insert(why);
    }
    Ok(match reason {
        None => Routed::Confirmed,
        Some(why) => Routed::Refused {
            partitions: refused,
            why,
        },
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::refused_copy_delay;

    #[test]
    fn refused_copies_wait_longer_each_time_up_to_the_maximum() {
        let max = Duration::from_secs(2);
        let delays: Vec<u128> = (1..=7)
            .map(|refusals| refused_copy_delay(refusals, max).as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(refused_copy_delay(u32::MAX, max), max);
    }
}
