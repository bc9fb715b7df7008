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
//!
//! | file | holds |
//! | --- | --- |
//! | `mod.rs` | the topology: declaring (or checking) exchanges and queues, connecting |
//! | `consumer.rs` | [`Consumer`]: the consuming loop, reconnection, acks on the right channel |
//! | `publish.rs` | [`Publisher`] with confirms, [`ResultsChannel`] for the results |
//! | `admin.rs` | [`BrokerAdmin`]: fetch, count, purge (tests, the demo, operators) |
//! | `router.rs` | [`Router`]: `palworker route`, the events queue to the partition queues (SPEC §10) |
//! | `partitions.rs` | the partition names, whose forwarded publisher a partition trusts, `topology --partitions` |

use backon::{BackoffBuilder, ExponentialBuilder};
use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use palworker_config::{AmqpSettings, DeclareMode, PartitionSettings};

mod admin;
mod consumer;
mod partitions;
mod publish;
mod router;

pub use admin::{BrokerAdmin, FetchedMessage};
pub use consumer::Consumer;
pub use partitions::{
    PUBLISHER_HEADER, PartitionTopology, definitions_json, partition_queue, partitions_exchange,
    url_vhost,
};
pub use publish::{PublishError, Publisher, ResultMessage, ResultsChannel};
pub use router::Router;

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
    /// `x-delivery-limit` of the events queue (and of partition queues).
    pub delivery_limit: u32,
    /// The partitions exchange and the partition queues this process
    /// declares (SPEC §10): none for the single process.
    pub partitions: Option<PartitionTopology>,
}

impl Topology {
    /// The single process's topology: it consumes the events queue.
    pub fn from_settings(settings: &AmqpSettings) -> Self {
        Topology {
            exchange: settings.exchange.clone(),
            queue: settings.queue.clone(),
            dead_letter_exchange: settings.dead_letter_exchange.clone(),
            dead_letter_queue: settings.dead_letter_queue.clone(),
            delivery_limit: settings.delivery_limit,
            partitions: None,
        }
    }

    /// What `palworker run` declares and consumes: the events queue when
    /// there is one partition, else its own partition's queue.
    pub fn for_worker(settings: &AmqpSettings, partitions: &PartitionSettings) -> Self {
        let mut topology = Topology::from_settings(settings);
        if partitions.is_partitioned() {
            topology.partitions = Some(PartitionTopology::owned(settings, partitions.index));
        }
        topology
    }

    /// What `palworker route` declares: every partition's queue, so that no
    /// copy is published before its queue exists; it consumes the events
    /// queue.
    pub fn for_router(settings: &AmqpSettings, partitions: &PartitionSettings) -> Self {
        let mut topology = Topology::from_settings(settings);
        topology.partitions = Some(PartitionTopology::all(settings, partitions.count));
        topology
    }

    /// The queue this process consumes.
    pub fn consumed_queue(&self) -> &str {
        self.partitions
            .as_ref()
            .and_then(PartitionTopology::owned_queue)
            .unwrap_or(&self.queue)
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

/// The delays between connection attempts: exponential with jitter from
/// `amqp.reconnect_initial` to `amqp.reconnect_max`, never giving up (the
/// consumer's and the results publisher's).
pub fn reconnect_schedule(settings: &AmqpSettings) -> backon::ExponentialBackoff {
    ExponentialBuilder::new()
        .with_min_delay(settings.reconnect_initial)
        .with_max_delay(settings.reconnect_max)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
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
    declared?;
    if let Some(partitions) = &topology.partitions {
        partitions::declare(connection, topology, partitions, passive).await?;
    }
    Ok(())
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
    if let Some(partitions) = &topology.partitions {
        for (_, queue) in &partitions.queues {
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
        channel
            .exchange_delete(
                partitions.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await?;
    }
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
