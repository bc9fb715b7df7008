//! The consuming loop: one session per connection, reconnecting with
//! backoff, acknowledging only on the channel a delivery came on.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use palworker_config::AmqpSettings;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::intake::{Checked, Disposition, Incoming, Intake};
use crate::telemetry::{BrokerConnectionChanged, ConsumerStopped, Metrics};

use super::partitions::{forwarded_publisher, publisher_of};
use super::{REASON_HEADER, Topology, connect, declare_topology, reconnect_schedule};

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
    /// `partitions.router_user` when this worker owns a partition: whose
    /// forwarded publisher header it believes.
    router_user: Option<String>,
    intake: Intake,
    metrics: Metrics,
    health: Health,
}

impl Consumer {
    /// A consumer of `topology`'s consumed queue; `router_user` as
    /// [`super::partitions::publisher_of`] takes it.
    pub fn new(
        settings: AmqpSettings,
        topology: Topology,
        router_user: Option<String>,
        intake: Intake,
        metrics: Metrics,
        health: Health,
    ) -> Self {
        Consumer {
            topology,
            router_user,
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
        let schedule = || reconnect_schedule(&self.settings);
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
                self.topology.consumed_queue().into(),
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
            user_id: publisher_of(
                delivery.properties.user_id().as_ref().map(|s| s.as_str()),
                forwarded_publisher(delivery.properties.headers().as_ref()),
                self.router_user.as_deref(),
            ),
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
                    dead_letter(
                        dead_letters,
                        &self.topology.dead_letter_exchange,
                        delivery,
                        &detail,
                    )
                    .await?;
                }
            }
        }
        if let Some(acked) = last_ack {
            acked.acker.ack(BasicAckOptions { multiple: true }).await?;
        }
        Ok(size as u64)
    }
}

/// Publishes a copy of `delivery` to the dead-letter exchange with the
/// reason `detail` and its routing key in headers, on a channel with
/// confirms; acknowledges it once the copy is confirmed, else requeues it.
pub(super) async fn dead_letter(
    channel: &Channel,
    exchange: &str,
    delivery: &Delivery,
    detail: &str,
) -> lapin::Result<()> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(REASON_HEADER.into(), AMQPValue::LongString(detail.into()));
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
    let confirm = channel
        .basic_publish(
            exchange.into(),
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
        tracing::error!("The broker refused the dead-letter copy; the message is requeued.");
        requeue(delivery).await?;
    }
    Ok(())
}

/// Rejects a delivery back to its queue, to be delivered again.
pub(super) async fn requeue(delivery: &Delivery) -> lapin::Result<()> {
    delivery
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        })
        .await?;
    Ok(())
}
