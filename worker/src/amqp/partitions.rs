//! The partitioned topology of SPEC §10: the direct exchange
//! `{amqp.exchange}.partitions`, one quorum queue `{amqp.queue}.p{i}` per
//! partition with single-active-consumer, bound with the key `p{i}`; whose
//! forwarded publisher a partition trusts; and the broker definitions
//! `palworker topology --partitions N` prints.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ExchangeKind};
use palworker_config::AmqpSettings;
use palworker_events::{PartitionCount, PartitionIndex};
use serde_json::{Value, json};

use super::{EVENT_BINDINGS, Topology, events_queue_arguments, queue_exists};

/// Header of a routed copy: the AMQP `user_id` the original message was
/// published with (absent when it had none). A partition believes it only
/// on a copy whose own `user_id` — validated by the broker — is
/// `partitions.router_user`.
pub const PUBLISHER_HEADER: &str = "x-palworker-publisher";

/// `{exchange}.partitions`.
pub fn partitions_exchange(exchange: &str) -> String {
    format!("{exchange}.partitions")
}

/// `{queue}.p{i}`.
pub fn partition_queue(queue: &str, partition: PartitionIndex) -> String {
    format!("{queue}.{partition}")
}

/// The partitions exchange and the partition queues one process declares.
#[derive(Debug, Clone)]
pub struct PartitionTopology {
    /// The direct exchange the router publishes copies to.
    pub exchange: String,
    /// Each partition queue this process declares, with its partition.
    pub queues: Vec<(PartitionIndex, String)>,
    /// The partition this process consumes (a partition worker), or none
    /// (the router, which consumes the events queue).
    pub owned: Option<PartitionIndex>,
}

impl PartitionTopology {
    /// A partition worker's: its own queue, which it consumes.
    pub fn owned(settings: &AmqpSettings, partition: PartitionIndex) -> Self {
        PartitionTopology {
            exchange: partitions_exchange(&settings.exchange),
            queues: vec![(partition, partition_queue(&settings.queue, partition))],
            owned: Some(partition),
        }
    }

    /// The router's: every partition's queue.
    pub fn all(settings: &AmqpSettings, count: PartitionCount) -> Self {
        PartitionTopology {
            exchange: partitions_exchange(&settings.exchange),
            queues: count
                .all()
                .map(|partition| (partition, partition_queue(&settings.queue, partition)))
                .collect(),
            owned: None,
        }
    }

    /// The queue of the partition this process owns.
    pub fn owned_queue(&self) -> Option<&str> {
        let owned = self.owned?;
        self.queues
            .iter()
            .find(|(partition, _)| *partition == owned)
            .map(|(_, queue)| queue.as_str())
    }
}

/// A partition queue's arguments when it is created: the events queue's
/// (quorum, delivery limit, dead-letter exchange) plus
/// `x-single-active-consumer`, so a second worker for the partition stands
/// by until the first disconnects.
fn partition_queue_arguments(topology: &Topology) -> FieldTable {
    let mut arguments = events_queue_arguments(topology);
    arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    arguments
}

/// Declares (or, passive, checks) the partitions exchange and queues and
/// binds each queue with its routing key. A queue that exists keeps its
/// arguments, as the events queue does.
pub(super) async fn declare(
    connection: &Connection,
    topology: &Topology,
    partitions: &PartitionTopology,
    passive: bool,
) -> lapin::Result<()> {
    let mut create = Vec::with_capacity(partitions.queues.len());
    for (_, queue) in &partitions.queues {
        create.push(!passive && !queue_exists(connection, queue).await?);
    }
    let channel = connection.create_channel().await?;
    channel
        .exchange_declare(
            partitions.exchange.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                passive,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    for ((partition, queue), create) in partitions.queues.iter().zip(create) {
        let (options, arguments) = if create {
            (
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                partition_queue_arguments(topology),
            )
        } else {
            (
                QueueDeclareOptions {
                    durable: true,
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
        };
        channel
            .queue_declare(queue.as_str().into(), options, arguments)
            .await?;
        if !passive {
            channel
                .queue_bind(
                    queue.as_str().into(),
                    partitions.exchange.as_str().into(),
                    partition.routing_key().as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
    }
    let _ = channel.close(200, "declared".into()).await;
    Ok(())
}

/// The publisher a partition checks a delivery against: the router's
/// forwarded header when the delivery's broker-validated `user_id` is the
/// router's user, else the delivery's own `user_id` (someone publishing
/// to the partitions exchange directly is judged as themselves, and a
/// header they set is ignored).
pub fn publisher_of<'a>(
    user_id: Option<&'a str>,
    forwarded: Option<&'a str>,
    router_user: Option<&str>,
) -> Option<&'a str> {
    match (user_id, router_user) {
        (Some(user), Some(router)) if user == router => forwarded,
        _ => user_id,
    }
}

/// The header [`PUBLISHER_HEADER`] of a delivery, when it is text.
pub(super) fn forwarded_publisher(headers: Option<&FieldTable>) -> Option<&str> {
    match headers?.inner().get(PUBLISHER_HEADER)? {
        AMQPValue::LongString(text) => std::str::from_utf8(text.as_bytes()).ok(),
        AMQPValue::ShortString(text) => Some(text.as_str()),
        _ => None,
    }
}

/// The virtual host of a broker URL (`/` when it names none).
pub fn url_vhost(url: &palworker_config::AmqpUrl) -> Option<String> {
    url.expose()
        .parse::<lapin::uri::AMQPUri>()
        .ok()
        .map(|uri| uri.vhost)
}

/// RabbitMQ definitions (the management plugin's import format) of the
/// whole topology for `count` partitions in `vhost`: the events exchange
/// and queue, the dead-letter exchange and queue, the partitions exchange
/// and every partition queue, with their bindings. Queues carry the
/// arguments the worker would create them with. Users and permissions are
/// the site's own and are not printed.
pub fn definitions_json(settings: &AmqpSettings, count: PartitionCount, vhost: &str) -> Value {
    let exchange = |name: &str, kind: &str| {
        json!({"name": name, "vhost": vhost, "type": kind, "durable": true,
               "auto_delete": false, "internal": false, "arguments": {}})
    };
    let queue = |name: &str, arguments: Value| {
        json!({"name": name, "vhost": vhost, "durable": true, "auto_delete": false,
               "arguments": arguments})
    };
    let binding = |source: &str, destination: &str, key: &str| {
        json!({"source": source, "vhost": vhost, "destination": destination,
               "destination_type": "queue", "routing_key": key, "arguments": {}})
    };
    let events_arguments = json!({
        "x-queue-type": "quorum",
        "x-delivery-limit": settings.delivery_limit,
        "x-dead-letter-exchange": settings.dead_letter_exchange,
    });
    let mut partition_arguments = events_arguments.clone();
    partition_arguments["x-single-active-consumer"] = json!(true);
    let partitions = partitions_exchange(&settings.exchange);

    let mut exchanges = vec![
        exchange(&settings.exchange, "topic"),
        exchange(&settings.dead_letter_exchange, "fanout"),
    ];
    let mut queues = vec![
        queue(&settings.queue, events_arguments),
        queue(
            &settings.dead_letter_queue,
            json!({"x-queue-type": "quorum"}),
        ),
    ];
    let mut bindings: Vec<Value> = EVENT_BINDINGS
        .iter()
        .map(|key| binding(&settings.exchange, &settings.queue, key))
        .collect();
    bindings.push(binding(
        &settings.dead_letter_exchange,
        &settings.dead_letter_queue,
        "",
    ));
    if count.get() > 1 {
        exchanges.push(exchange(&partitions, "direct"));
        for partition in count.all() {
            let name = partition_queue(&settings.queue, partition);
            queues.push(queue(&name, partition_arguments.clone()));
            bindings.push(binding(&partitions, &name, &partition.routing_key()));
        }
    }
    json!({
        "vhosts": [{"name": vhost}],
        "exchanges": exchanges,
        "queues": queues,
        "bindings": bindings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_believes_the_forwarded_publisher_only_from_the_router() {
        let router = Some("palworker-router");
        // The router's copy: the original publisher.
        assert_eq!(
            publisher_of(Some("palworker-router"), Some("hr-system"), router),
            Some("hr-system")
        );
        // The router's copy of a message that had no user_id.
        assert_eq!(publisher_of(Some("palworker-router"), None, router), None);
        // Anyone else is judged as themselves, whatever header they set.
        assert_eq!(
            publisher_of(Some("intruder"), Some("hr-system"), router),
            Some("intruder")
        );
        assert_eq!(publisher_of(None, Some("hr-system"), router), None);
        // No router user configured: no header is believed.
        assert_eq!(
            publisher_of(Some("palworker-router"), Some("hr-system"), None),
            Some("palworker-router")
        );
    }

    fn settings() -> AmqpSettings {
        palworker_config::Settings::from_toml_str("", Vec::new())
            .expect("defaults")
            .amqp
    }

    #[test]
    fn definitions_hold_every_partition_queue_with_single_active_consumer() {
        let settings = settings();
        let definitions = definitions_json(&settings, PartitionCount::new(3).unwrap(), "/");
        let names = |kind: &str| -> Vec<String> {
            definitions[kind]
                .as_array()
                .unwrap()
                .iter()
                .map(|item| item["name"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(
            names("exchanges"),
            [
                "pal.lifecycle",
                "pal.lifecycle.dlx",
                "pal.lifecycle.partitions"
            ]
        );
        assert_eq!(
            names("queues"),
            [
                "palworker.events",
                "palworker.dead",
                "palworker.events.p0",
                "palworker.events.p1",
                "palworker.events.p2"
            ]
        );
        let p2 = &definitions["queues"][4]["arguments"];
        assert_eq!(p2["x-single-active-consumer"], json!(true));
        assert_eq!(p2["x-queue-type"], json!("quorum"));
        assert_eq!(p2["x-dead-letter-exchange"], json!("pal.lifecycle.dlx"));
        let bound: Vec<(String, String)> = definitions["bindings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["source"] == json!("pal.lifecycle.partitions"))
            .map(|b| {
                (
                    b["destination"].as_str().unwrap().to_owned(),
                    b["routing_key"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            bound,
            [
                ("palworker.events.p0".to_owned(), "p0".to_owned()),
                ("palworker.events.p1".to_owned(), "p1".to_owned()),
                ("palworker.events.p2".to_owned(), "p2".to_owned()),
            ]
        );
        // One partition: today's topology, no partitions exchange.
        let single = definitions_json(&settings, PartitionCount::ONE, "/");
        assert_eq!(single["exchanges"].as_array().unwrap().len(), 2);
    }
}
