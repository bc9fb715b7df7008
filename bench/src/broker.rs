//! The broker alone: bulk publishing with pipelined confirms, and the
//! broker ceiling the ingest scenario is measured against. The benchmarks
//! talk to lapin directly; the worker's own `amqp` module stays production
//! code.

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use palworker::amqp::BrokerAdmin;

async fn connect(url: &str, name: &str) -> lapin::Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url, properties).await
}

fn quorum_arguments() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    arguments
}

/// Publishes persistent messages with up to `window` publisher confirms in
/// flight at once (instead of waiting for each), failing on the first nack.
async fn publish_pipelined(
    channel: &Channel,
    exchange: &str,
    messages: impl IntoIterator<Item = (String, Vec<u8>)>,
    content_type: &str,
    window: usize,
) -> anyhow::Result<u64> {
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(content_type.into());
    let mut in_flight: std::collections::VecDeque<lapin::PublisherConfirm> =
        std::collections::VecDeque::with_capacity(window.max(1));
    let mut published = 0u64;
    for (routing_key, body) in messages {
        if in_flight.len() >= window.max(1)
            && let Some(confirm) = in_flight.pop_front()
        {
            anyhow::ensure!(
                confirm.await?.is_ack(),
                "the broker did not confirm a message (nack)"
            );
        }
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                properties.clone(),
            )
            .await?;
        in_flight.push_back(confirm);
        published += 1;
    }
    while let Some(confirm) = in_flight.pop_front() {
        anyhow::ensure!(
            confirm.await?.is_ack(),
            "the broker did not confirm a message (nack)"
        );
    }
    Ok(published)
}

/// Publishes many messages persistently to `exchange`, with up to `window`
/// confirms in flight; every message is confirmed when it returns. Returns
/// how many were published.
pub async fn publish_many(
    url: &str,
    exchange: &str,
    messages: impl IntoIterator<Item = (String, Vec<u8>)>,
    content_type: &str,
    window: usize,
) -> anyhow::Result<u64> {
    let connection = connect(url, "palworker-bench-publish").await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let published = publish_pipelined(&channel, exchange, messages, content_type, window).await;
    let _ = connection.close(200, "done".into()).await;
    published
}

/// Number of messages ready in `queue`.
pub async fn queue_depth(url: &str, queue: &str) -> anyhow::Result<u32> {
    let admin = BrokerAdmin::connect(url).await?;
    let count = admin.message_count(queue).await;
    admin.close().await;
    count
}

/// What the broker alone achieves (see [`ceiling_benchmark`]).
#[derive(Debug, Clone, Copy)]
pub struct CeilingReport {
    pub messages: u64,
    /// Publishing every message with confirms into the empty queue.
    pub publish_secs: f64,
    /// Consuming the pre-filled queue, one manual ack per message.
    pub consume_secs: f64,
}

/// The broker ceiling of `palworker bench`: publishes `bodies` persistently
/// with confirms (`window` in flight) to a fresh quorum queue, then consumes
/// them with manual acks, one `basic.ack` per message and `prefetch`
/// unacknowledged at most, without any processing. The queue is deleted
/// afterwards, also on failure.
pub async fn ceiling(
    url: &str,
    bodies: impl IntoIterator<Item = Vec<u8>>,
    prefetch: u16,
    window: usize,
    timeout: std::time::Duration,
) -> anyhow::Result<CeilingReport> {
    let queue = format!("palworker-bench-ceiling-{}", uuid::Uuid::new_v4().simple());
    let connection = connect(url, "palworker-bench-ceiling").await?;
    let channel = connection.create_channel().await?;
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            quorum_arguments(),
        )
        .await?;
    let result = tokio::time::timeout(
        timeout,
        ceiling_rounds(&connection, &channel, &queue, bodies, prefetch, window),
    )
    .await
    .unwrap_or_else(|_| {
        Err(anyhow::anyhow!(
            "the ceiling benchmark took longer than {timeout:?}"
        ))
    });
    let deleted = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = connection.close(200, "done".into()).await;
    let report = result?;
    deleted?;
    Ok(report)
}

async fn ceiling_rounds(
    connection: &Connection,
    publish_channel: &Channel,
    queue: &str,
    bodies: impl IntoIterator<Item = Vec<u8>>,
    prefetch: u16,
    window: usize,
) -> anyhow::Result<CeilingReport> {
    publish_channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let started = std::time::Instant::now();
    let messages = publish_pipelined(
        publish_channel,
        "",
        bodies.into_iter().map(|body| (queue.to_owned(), body)),
        "application/cloudevents+json",
        window,
    )
    .await?;
    let publish_secs = started.elapsed().as_secs_f64();

    let channel = connection.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let started = std::time::Instant::now();
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "palworker-bench-ceiling".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut consumed = 0u64;
    while consumed < messages {
        let delivery = match consumer.next().await {
            Some(delivery) => delivery?,
            None => anyhow::bail!("the broker ended the ceiling consumer"),
        };
        delivery.acker.ack(BasicAckOptions::default()).await?;
        consumed += 1;
    }
    let consume_secs = started.elapsed().as_secs_f64();
    let _ = channel.close(200, "done".into()).await;
    Ok(CeilingReport {
        messages,
        publish_secs,
        consume_secs,
    })
}
