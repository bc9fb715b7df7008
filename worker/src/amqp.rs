//! RabbitMQ: topology, the consuming loop (which owns reconnection), dead
//! lettering, a confirming publisher, and the channel the worker's results
//! go out on (the results publisher's loop is `results.rs`). Only this
//! module imports lapin.
//!
//! Architecture invariant: a delivery is acknowledged only on the channel it
//! arrived on. When a connection dies, its unacknowledged deliveries are
//! dropped with it (the broker redelivers them; the ledger deduplicates), and
//! the loop builds a new connection, channel and consumer from scratch —
//! lapin's own connection recovery is left off.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use palworker_config::{AmqpSettings, DeclareMode};
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::intake::{Checked, Disposition, Incoming, Intake};
use crate::telemetry::{BrokerConnectionChanged, ConsumerStopped, Metrics};

/// Routing keys the events queue is bound with (SPEC §4).
pub const EVENT_BINDINGS: [&str; 3] = ["hr.#", "project.#", "partner.#"];
/// Header naming why a message was dead-lettered.
pub const REASON_HEADER: &str = "x-palworker-reason";

/// The names of the SPEC §4 topology.
#[derive(Debug, Clone)]
pub struct Topology {
    pub exchange: String,
    pub queue: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    /// `x-delivery-limit` of the events queue.
    pub delivery_limit: u32,
}

impl Topology {
    pub fn from_settings(settings: &AmqpSettings) -> Self {
        Topology {
            exchange: settings.exchange.clone(),
            queue: settings.queue.clone(),
            dead_letter_exchange: settings.dead_letter_exchange.clone(),
            dead_letter_queue: settings.dead_letter_queue.clone(),
            delivery_limit: settings.delivery_limit,
        }
    }
}

fn quorum_arguments() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    arguments
}

/// The events queue's arguments when the worker creates it: a quorum queue
/// that sets a message aside to the dead-letter exchange after
/// `delivery_limit` deliveries (SPEC §11.1), so a message no consumer can
/// even receive never blocks it.
fn events_queue_arguments(topology: &Topology) -> FieldTable {
    let mut arguments = quorum_arguments();
    arguments.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(i64::from(topology.delivery_limit)),
    );
    arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(topology.dead_letter_exchange.as_str().into()),
    );
    arguments
}

/// Whether `queue` exists, asked on a channel of its own (a passive declare
/// of a missing queue closes its channel).
async fn queue_exists(connection: &Connection, queue: &str) -> lapin::Result<bool> {
    let probe = connection.create_channel().await?;
    let exists = probe
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .is_ok();
    if exists {
        let _ = probe.close(200, "checked".into()).await;
    }
    Ok(exists)
}

/// Declares (or, in passive mode, checks) the topology. Idempotent. An
/// events queue that exists already keeps its arguments (a queue's
/// arguments cannot change; `ops/rabbitmq/definitions.json` sets the
/// delivery limit and dead-letter exchange of an older one as a policy);
/// a new one gets [`events_queue_arguments`].
pub async fn declare_topology(
    connection: &Connection,
    topology: &Topology,
    mode: DeclareMode,
) -> lapin::Result<()> {
    let passive = matches!(mode, DeclareMode::Passive);
    // An existing queue is checked, not declared again: a declaration with
    // other arguments than it was created with is refused.
    let events_queue = if passive || queue_exists(connection, &topology.queue).await? {
        EventsQueue::Exists
    } else {
        EventsQueue::Create(events_queue_arguments(topology))
    };
    let channel = connection.create_channel().await?;
    let declared = declare_on(&channel, topology, passive, events_queue).await;
    let _ = channel.close(200, "declared".into()).await;
    declared
}

/// Whether the events queue is there already, or is created with these arguments.
enum EventsQueue {
    Exists,
    Create(FieldTable),
}

async fn declare_on(
    channel: &Channel,
    topology: &Topology,
    passive: bool,
    events_queue: EventsQueue,
) -> lapin::Result<()> {
    let exchange_options = ExchangeDeclareOptions {
        durable: true,
        passive,
        ..ExchangeDeclareOptions::default()
    };
    let queue_options = QueueDeclareOptions {
        durable: true,
        passive,
        ..QueueDeclareOptions::default()
    };
    channel
        .exchange_declare(
            topology.exchange.as_str().into(),
            ExchangeKind::Topic,
            exchange_options,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            topology.dead_letter_exchange.as_str().into(),
            ExchangeKind::Fanout,
            exchange_options,
            FieldTable::default(),
        )
        .await?;
    let (events_queue_options, events_queue_arguments) = match events_queue {
        EventsQueue::Exists => (
            QueueDeclareOptions {
                passive: true,
                ..queue_options
            },
            FieldTable::default(),
        ),
        EventsQueue::Create(arguments) => (queue_options, arguments),
    };
    channel
        .queue_declare(
            topology.queue.as_str().into(),
            events_queue_options,
            events_queue_arguments,
        )
        .await?;
    channel
        .queue_declare(
            topology.dead_letter_queue.as_str().into(),
            queue_options,
            quorum_arguments(),
        )
        .await?;
    if passive {
        return Ok(());
    }
    for binding in EVENT_BINDINGS {
        channel
            .queue_bind(
                topology.queue.as_str().into(),
                topology.exchange.as_str().into(),
                binding.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    channel
        .queue_bind(
            topology.dead_letter_queue.as_str().into(),
            topology.dead_letter_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Deletes the topology (tests and the demo clean up after themselves).
pub async fn delete_topology(channel: &Channel, topology: &Topology) -> lapin::Result<()> {
    for queue in [&topology.queue, &topology.dead_letter_queue] {
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    for exchange in [&topology.exchange, &topology.dead_letter_exchange] {
        channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await?;
    }
    Ok(())
}

async fn connect(url: &str, name: &str) -> lapin::Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url, properties).await
}

/// How far a consumer session got before it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reached {
    Connecting,
    /// Consuming, since this instant.
    Consuming(std::time::Instant),
}

/// Why a consumer session ended without a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Shutdown,
    /// The ledger cannot be written: consume again once it can.
    LedgerUnavailable,
}

/// Why a consumer session ended, how far it got and how many deliveries it
/// settled.
struct SessionError {
    reached: Reached,
    settled: u64,
    error: anyhow::Error,
}

/// How many deliveries a session takes at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prefetch {
    /// `amqp.prefetch`.
    Full,
    /// One, until a delivery settles (after a session died without settling any).
    Careful,
}

/// A session's connection, channels and consumer, once consuming.
struct Consuming {
    connection: Connection,
    channel: Channel,
    dead_letters: Channel,
    consumer: lapin::Consumer,
}

/// The consuming side of the worker.
pub struct Consumer {
    settings: AmqpSettings,
    topology: Topology,
    intake: Intake,
    metrics: Metrics,
    health: Health,
}

impl Consumer {
    pub fn new(settings: AmqpSettings, intake: Intake, metrics: Metrics, health: Health) -> Self {
        Consumer {
            topology: Topology::from_settings(&settings),
            settings,
            intake,
            metrics,
            health,
        }
    }

    /// Consumes until `shutdown` is cancelled, reconnecting with exponential
    /// backoff (`amqp.reconnect_initial` … `amqp.reconnect_max`) whenever the
    /// connection or channel fails.
    pub async fn run(self, shutdown: CancellationToken) {
        let schedule = || {
            ExponentialBuilder::new()
                .with_min_delay(self.settings.reconnect_initial)
                .with_max_delay(self.settings.reconnect_max)
                .with_factor(2.0)
                .with_jitter()
                .without_max_times()
                .build()
        };
        let mut delays = schedule();
        let mut prefetch = Prefetch::Full;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let result = self.session(&shutdown, prefetch).await;
            self.set_disconnected();
            match result {
                Ok(Ended::Shutdown) => break,
                Ok(Ended::LedgerUnavailable) => {
                    // Not the broker's fault: consume again as soon as the
                    // ledger is writable (it is reopened with its own backoff).
                    tokio::select! {
                        _ = self.health.ledger.available() => {}
                        _ = shutdown.cancelled() => break,
                    }
                }
                Err(SessionError {
                    reached,
                    settled,
                    error,
                }) => {
                    // A session that died before it settled a delivery may
                    // have met a frame its client cannot parse: the next
                    // ones take one delivery at a time until one settles, so
                    // only that message counts deliveries towards the
                    // queue's limit, not the ones behind it.
                    prefetch = if settled == 0 && matches!(reached, Reached::Consuming(_)) {
                        Prefetch::Careful
                    } else {
                        Prefetch::Full
                    };
                    // Only a session that consumed for a while restarts the
                    // schedule: one that dies again within seconds (a frame
                    // the client cannot parse, redelivered) keeps backing off.
                    if let Reached::Consuming(since) = reached
                        && since.elapsed() >= self.settings.reconnect_max
                    {
                        delays = schedule();
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
        }
        self.set_disconnected();
    }

    fn set_connected(&self) {
        if !self.health.broker_connected.swap(true, Ordering::SeqCst) {
            BrokerConnectionChanged::Up.emit(&self.metrics);
        }
    }

    fn set_disconnected(&self) {
        self.health.broker_connected.store(false, Ordering::SeqCst);
        ConsumerStopped.emit(&self.metrics);
    }

    /// One connection's life: connect, declare, consume until shutdown, the
    /// ledger's unavailability or a failure, which says how far it got.
    async fn session(
        &self,
        shutdown: &CancellationToken,
        prefetch: Prefetch,
    ) -> Result<Ended, SessionError> {
        let consuming = self
            .connect_and_consume(prefetch)
            .await
            .map_err(|error| SessionError {
                reached: Reached::Connecting,
                settled: 0,
                error,
            })?;
        self.set_connected();
        let since = std::time::Instant::now();
        let mut settled = 0u64;
        self.consume(shutdown, consuming, prefetch, &mut settled)
            .await
            .map_err(|error| SessionError {
                reached: Reached::Consuming(since),
                settled,
                error,
            })
    }

    /// The prefetch of a session.
    fn prefetch_count(&self, prefetch: Prefetch) -> u16 {
        match prefetch {
            Prefetch::Full => self.settings.prefetch,
            Prefetch::Careful => 1,
        }
    }

    /// Connects, declares the topology and starts consuming.
    async fn connect_and_consume(&self, prefetch: Prefetch) -> anyhow::Result<Consuming> {
        let connection = connect(self.settings.url.expose(), "palworker").await?;
        let channel = connection.create_channel().await?;
        declare_topology(&connection, &self.topology, self.settings.declare).await?;
        channel
            .basic_qos(self.prefetch_count(prefetch), BasicQosOptions::default())
            .await?;
        let dead_letters = connection.create_channel().await?;
        dead_letters
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let tag = format!("palworker-{}", uuid::Uuid::new_v4());
        let consumer = channel
            .basic_consume(
                self.topology.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Consuming {
            connection,
            channel,
            dead_letters,
            consumer,
        })
    }

    /// Receives, validates and settles deliveries until shutdown or a failure.
    async fn consume(
        &self,
        shutdown: &CancellationToken,
        consuming: Consuming,
        mut prefetch: Prefetch,
        settled: &mut u64,
    ) -> anyhow::Result<Ended> {
        let Consuming {
            connection,
            channel,
            dead_letters,
            mut consumer,
        } = consuming;
        let max_batch = usize::from(self.settings.prefetch.max(1));
        // This task receives and validates deliveries and settles stored
        // batches; the session's intake thread stores and flushes a batch at
        // a time, taking every delivery that arrived meanwhile as the next
        // one. Prefetch bounds every delivery not yet settled.
        let (queue, mut stored) = self.intake.start_thread(max_batch)?;
        let mut unsettled: VecDeque<Delivery> = VecDeque::new();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    // The intake thread stores what it was given, then stops;
                    // those deliveries are settled before the channel closes.
                    drop(queue);
                    while !unsettled.is_empty() {
                        let Some(dispositions) = stored.recv().await else {
                            break;
                        };
                        self.settle(&dead_letters, &mut unsettled, dispositions).await?;
                    }
                    let _ = channel.close(200, "palworker shutting down".into()).await;
                    let _ = connection.close(200, "palworker shutting down".into()).await;
                    return Ok(Ended::Shutdown);
                }
                dispositions = stored.recv() => {
                    let Some(dispositions) = dispositions else {
                        anyhow::bail!("the intake thread stopped");
                    };
                    *settled += self.settle(&dead_letters, &mut unsettled, dispositions).await?;
                    if prefetch == Prefetch::Careful && *settled > 0 {
                        prefetch = Prefetch::Full;
                        channel
                            .basic_qos(self.prefetch_count(prefetch), BasicQosOptions::default())
                            .await?;
                    }
                    if !self.health.ledger.is_available() {
                        // Take no more deliveries: closing the channel returns
                        // every unsettled one to the queue, once.
                        drop(queue);
                        let _ = channel.close(200, "the ledger is unavailable".into()).await;
                        let _ = connection.close(200, "the ledger is unavailable".into()).await;
                        return Ok(Ended::LedgerUnavailable);
                    }
                }
                next = consumer.next() => {
                    let delivery = match next {
                        Some(delivery) => delivery?,
                        None => anyhow::bail!("the broker ended the consumer"),
                    };
                    if !queue.push(self.check(&delivery)) {
                        anyhow::bail!("the intake thread stopped");
                    }
                    unsettled.push_back(delivery);
                }
            }
        }
    }

    /// Validates a delivery.
    fn check(&self, delivery: &Delivery) -> Checked {
        self.intake.check(Incoming {
            body: &delivery.data,
            content_type: delivery
                .properties
                .content_type()
                .as_ref()
                .map(|s| s.as_str()),
            user_id: delivery.properties.user_id().as_ref().map(|s| s.as_str()),
        })
    }

    /// Acknowledges, dead-letters or requeues each delivery of a stored batch;
    /// how many. The batch is the oldest unsettled deliveries, one per disposition.
    async fn settle(
        &self,
        dead_letters: &Channel,
        unsettled: &mut VecDeque<Delivery>,
        dispositions: Vec<Disposition>,
    ) -> anyhow::Result<u64> {
        let size = dispositions.len().min(unsettled.len());
        let batch: Vec<Delivery> = unsettled.drain(..size).collect();
        // Consecutive acks go out as one `basic.ack` with `multiple`: it
        // covers every earlier unacknowledged delivery of this channel, and
        // all of those are acked ones of this batch (earlier batches are
        // settled, later ones have higher delivery tags, and a requeue or
        // dead-letter first sends the acks before it). One frame per batch
        // instead of one per delivery.
        let mut last_ack: Option<&Delivery> = None;
        for (index, delivery) in batch.iter().enumerate() {
            let disposition = dispositions
                .get(index)
                .cloned()
                .unwrap_or(Disposition::Requeue);
            if !matches!(disposition, Disposition::Ack)
                && let Some(acked) = last_ack.take()
            {
                acked.acker.ack(BasicAckOptions { multiple: true }).await?;
            }
            match disposition {
                Disposition::Ack => {
                    last_ack = Some(delivery);
                }
                Disposition::Requeue => requeue(delivery).await?,
                Disposition::DeadLetter { detail, .. } => {
                    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
                    headers.insert(
                        REASON_HEADER.into(),
                        AMQPValue::LongString(detail.as_str().into()),
                    );
                    headers.insert(
                        "x-palworker-routing-key".into(),
                        AMQPValue::LongString(delivery.routing_key.as_str().into()),
                    );
                    let mut properties = BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_headers(headers);
                    if let Some(content_type) = delivery.properties.content_type() {
                        properties = properties.with_content_type(content_type.clone());
                    }
                    let confirm = dead_letters
                        .basic_publish(
                            self.topology.dead_letter_exchange.as_str().into(),
                            delivery.routing_key.clone(),
                            BasicPublishOptions::default(),
                            &delivery.data,
                            properties,
                        )
                        .await?
                        .await?;
                    if confirm.is_ack() {
                        delivery.acker.ack(BasicAckOptions::default()).await?;
                    } else {
                        tracing::error!(
                            "The broker refused the dead-letter copy; the message is requeued."
                        );
                        requeue(delivery).await?;
                    }
                }
            }
        }
        if let Some(acked) = last_ack {
            acked.acker.ack(BasicAckOptions { multiple: true }).await?;
        }
        Ok(size as u64)
    }
}

/// Rejects a delivery back to its queue, to be delivered again.
async fn requeue(delivery: &Delivery) -> lapin::Result<()> {
    delivery
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        })
        .await?;
    Ok(())
}

/// A publisher with confirms (the `publish` command, the demo, tests).
pub struct Publisher {
    connection: Connection,
    channel: Channel,
    exchange: String,
}

impl Publisher {
    pub async fn connect(url: &str, exchange: &str) -> anyhow::Result<Publisher> {
        let connection = connect(url, "palworker-publish").await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Publisher {
            connection,
            channel,
            exchange: exchange.to_owned(),
        })
    }

    /// Publishes one message persistently and waits for the broker's confirm.
    pub async fn publish(
        &self,
        routing_key: &str,
        body: &[u8],
        content_type: &str,
        user_id: Option<&str>,
    ) -> anyhow::Result<()> {
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(content_type.into());
        if let Some(user) = user_id {
            properties = properties.with_user_id(user.into());
        }
        let confirm = self
            .channel
            .basic_publish(
                self.exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await?
            .await?;
        anyhow::ensure!(
            confirm.is_ack(),
            "the broker did not confirm the message (nack)"
        );
        Ok(())
    }

    /// Publishes a CloudEvent in structured mode with its type as routing key.
    pub async fn publish_event(
        &self,
        event: &serde_json::Value,
        user_id: Option<&str>,
    ) -> anyhow::Result<()> {
        let routing_key = event
            .get("type")
            .and_then(|t| t.as_str())
            .ok_or_else(|| anyhow::anyhow!("the event has no string `type` to route by"))?;
        let body = serde_json::to_vec(event)?;
        self.publish(routing_key, &body, "application/cloudevents+json", user_id)
            .await
    }

    pub async fn close(self) {
        let _ = self.connection.close(200, "done".into()).await;
    }
}

/// Why results could not be published (SPEC §11.3). Either way they stay
/// in the outbox and are published again later.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The connection, the channel or the results exchange failed (a
    /// missing exchange closes the channel: `NOT_FOUND`).
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    /// The broker answered the publish with a negative confirm.
    #[error("the broker refused a result (nack)")]
    Refused,
}

/// One result to publish: a CloudEvent in structured mode.
#[derive(Debug, Clone)]
pub struct ResultMessage {
    /// The CloudEvent `type`, which is the routing key.
    pub routing_key: &'static str,
    /// The CloudEvent `id`, also the AMQP `message_id`.
    pub id: String,
    pub body: Vec<u8>,
}

/// The worker's channel for its results (SPEC §11.3): persistent messages
/// to `amqp.results_exchange` with publisher confirms, without `mandatory`
/// (with no queue bound, the broker drops them, and that is not an error).
pub struct ResultsChannel {
    connection: Connection,
    channel: Channel,
    exchange: String,
}

impl ResultsChannel {
    /// Connects, declares the results exchange (topic, durable; in passive
    /// mode only checks that it exists) and turns confirms on.
    pub async fn open(settings: &AmqpSettings) -> Result<ResultsChannel, PublishError> {
        let connection = connect(settings.url.expose(), "palworker-results").await?;
        let opened = async {
            let channel = connection.create_channel().await?;
            channel
                .exchange_declare(
                    settings.results_exchange.as_str().into(),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions {
                        durable: true,
                        passive: matches!(settings.declare, DeclareMode::Passive),
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok::<_, lapin::Error>(channel)
        }
        .await;
        match opened {
            Ok(channel) => Ok(ResultsChannel {
                connection,
                channel,
                exchange: settings.results_exchange.clone(),
            }),
            Err(error) => {
                let _ = connection.close(200, "results channel failed".into()).await;
                Err(error.into())
            }
        }
    }

    /// Publishes `messages` and waits for their confirms (all sent first,
    /// then every confirm awaited: one round trip per batch, not per
    /// message). `Ok` only when the broker confirmed every one of them.
    pub async fn publish(&self, messages: &[ResultMessage]) -> Result<(), PublishError> {
        let mut confirms = Vec::with_capacity(messages.len());
        for message in messages {
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/cloudevents+json".into())
                .with_message_id(message.id.as_str().into())
                .with_type(message.routing_key.into());
            confirms.push(
                self.channel
                    .basic_publish(
                        self.exchange.as_str().into(),
                        message.routing_key.into(),
                        BasicPublishOptions::default(),
                        &message.body,
                        properties,
                    )
                    .await?,
            );
        }
        let mut refused = false;
        for confirm in confirms {
            refused |= !confirm.await?.is_ack();
        }
        if refused {
            return Err(PublishError::Refused);
        }
        Ok(())
    }

    pub async fn close(self) {
        let _ = self.channel.close(200, "palworker stopping".into()).await;
        let _ = self
            .connection
            .close(200, "palworker stopping".into())
            .await;
    }
}

/// A message fetched from a queue (tests, the demo, operators inspecting the DLQ).
#[derive(Debug, Clone)]
pub struct FetchedMessage {
    pub body: Vec<u8>,
    pub routing_key: String,
    /// The `x-palworker-reason` header, when present.
    pub reason: Option<String>,
    /// The AMQP `message_id`, when present.
    pub message_id: Option<String>,
}

/// A short-lived connection for administrative chores.
pub struct BrokerAdmin {
    connection: Connection,
    channel: Channel,
}

impl BrokerAdmin {
    pub async fn connect(url: &str) -> anyhow::Result<BrokerAdmin> {
        let connection = connect(url, "palworker-admin").await?;
        let channel = connection.create_channel().await?;
        Ok(BrokerAdmin {
            connection,
            channel,
        })
    }

    pub async fn declare(&self, topology: &Topology) -> anyhow::Result<()> {
        declare_topology(&self.connection, topology, DeclareMode::Declare).await?;
        Ok(())
    }

    pub async fn delete(&self, topology: &Topology) -> anyhow::Result<()> {
        delete_topology(&self.channel, topology).await?;
        Ok(())
    }

    /// Takes every message currently in `queue` (acknowledging them).
    pub async fn drain(&self, queue: &str) -> anyhow::Result<Vec<FetchedMessage>> {
        let mut out = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await?
        {
            let delivery = message.delivery;
            let reason = delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get(&ShortString::from(REASON_HEADER)).cloned())
                .and_then(|value| match value {
                    AMQPValue::LongString(s) => {
                        Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                    }
                    AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
                    _ => None,
                });
            out.push(FetchedMessage {
                message_id: delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|id| id.as_str().to_owned()),
                body: delivery.data,
                routing_key: delivery.routing_key.as_str().to_owned(),
                reason,
            });
        }
        Ok(out)
    }

    /// Declares a durable topic exchange (idempotent).
    pub async fn declare_topic_exchange(&self, exchange: &str) -> anyhow::Result<()> {
        self.channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }

    /// Declares a durable queue bound to `exchange` with `binding` — how a
    /// publishing system receives palworker's results (README).
    pub async fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        binding: &str,
    ) -> anyhow::Result<()> {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        self.channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                binding.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }

    /// Deletes a queue (tests clean up after themselves).
    pub async fn delete_queue(&self, queue: &str) -> anyhow::Result<()> {
        self.channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await?;
        Ok(())
    }

    /// Deletes an exchange (tests clean up after themselves).
    pub async fn delete_exchange(&self, exchange: &str) -> anyhow::Result<()> {
        self.channel
            .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
            .await?;
        Ok(())
    }

    /// Number of messages ready in `queue`.
    pub async fn message_count(&self, queue: &str) -> anyhow::Result<u32> {
        let declared = self
            .channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(declared.message_count())
    }

    pub async fn close(self) {
        let _ = self.connection.close(200, "done".into()).await;
    }
}
