//! `palworker route` (SPEC §10): the stateless router. It consumes the
//! events queue (any number of replicas compete for it), validates each
//! delivery as `run` does — bad input is dead-lettered with the same
//! reasons — and publishes a copy of each valid event to every partition
//! it concerns, on the direct exchange `{exchange}.partitions` with routing
//! key `p{i}`, mandatory and with publisher confirms. It acknowledges a
//! delivery only when every copy is confirmed; a copy the broker refuses
//! or cannot route returns the delivery to the queue. A router killed
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

use super::consumer::{dead_letter, requeue};
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

/// A valid delivery whose copies are published and not all confirmed yet.
struct Routing {
    delivery: Delivery,
    event: Event,
    partitions: Vec<PartitionIndex>,
}

/// What the broker said of a delivery's copies.
enum Routed {
    /// Every copy confirmed: acknowledge.
    Confirmed,
    /// A copy was refused or had no queue: requeue, say why.
    Refused(String),
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
        // Copies and dead letters go out on one channel with confirms.
        let out = connection.create_channel().await?;
        out.confirm_select(ConfirmSelectOptions::default()).await?;
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
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    // Settle what is published; the rest returns to the queue
                    // when the channel closes.
                    while let Some((routing, routed)) = confirming.next().await {
                        self.settle(routing, routed?).await?;
                    }
                    let _ = channel.close(200, "palworker router shutting down".into()).await;
                    let _ = connection.close(200, "palworker router shutting down".into()).await;
                    return Ok(());
                }
                Some((routing, routed)) = confirming.next(), if !confirming.is_empty() => {
                    self.settle(routing, routed?).await?;
                }
                next = consumer.next() => {
                    let delivery = match next {
                        Some(delivery) => delivery?,
                        None => anyhow::bail!("the broker ended the router's consumer"),
                    };
                    match self.check(&delivery) {
                        Checked::Valid { event, publisher } => {
                            let partitions = self.count.of_event(&event);
                            let confirms = self
                                .publish_copies(&out, &delivery, publisher.as_deref(), &partitions)
                                .await?;
                            let routing = Routing { delivery, event, partitions };
                            confirming.push(async move {
                                let routed = confirmed(confirms, &routing.partitions).await;
                                (routing, routed)
                            });
                        }
                        Checked::Rejected(rejection) => {
                            if let Disposition::DeadLetter { detail, .. } =
                                rejection.dead_lettered(&self.metrics)
                            {
                                dead_letter(
                                    &out,
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

    /// Publishes one copy of `delivery` per partition (mandatory); the
    /// confirmations to wait for, in partition order.
    async fn publish_copies(
        &self,
        out: &Channel,
        delivery: &Delivery,
        publisher: Option<&str>,
        partitions: &[PartitionIndex],
    ) -> lapin::Result<Vec<PublisherConfirm>> {
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        // Only the router says who published: a header the publisher set
        // itself is dropped.
        let mut fields = headers.inner().clone();
        fields.remove(PUBLISHER_HEADER);
        headers = FieldTable::from(fields);
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
                out.basic_publish(
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

    /// Acknowledges a delivery whose copies are all confirmed, or returns it
    /// to the queue.
    async fn settle(&self, routing: Routing, routed: Routed) -> lapin::Result<()> {
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
            }
            Routed::Refused(why) => {
                tracing::error!(
                    event_id = %routing.event.escaped_id(),
                    reason = %why,
                    "A copy for a partition was not taken; the event returns to the queue."
                );
                requeue(&routing.delivery).await?;
            }
        }
        Ok(())
    }
}

/// Waits for every copy's confirmation.
async fn confirmed(
    confirms: Vec<PublisherConfirm>,
    partitions: &[PartitionIndex],
) -> lapin::Result<Routed> {
    let mut refused = None;
    for (confirm, partition) in confirms.into_iter().zip(partitions) {
        let why = match confirm.await? {
            Confirmation::Ack(None) => continue,
            Confirmation::Ack(Some(_)) => format!("no queue is bound for partition {partition}"),
            Confirmation::Nack(_) => format!("the broker refused the copy for {partition}"),
            Confirmation::NotRequested => {
                format!("no confirmation for {partition} (confirms are off)")
            }
        };
        refused.get_or_insert(why);
    }
    Ok(refused.map_or(Routed::Confirmed, Routed::Refused))
}
