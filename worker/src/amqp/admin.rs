//! A short-lived connection for administrative chores: fetching from a
//! queue, counting it, purging it.

use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ExchangeKind};
use palworker_config::DeclareMode;

use super::{REASON_HEADER, Topology, connect, declare_topology, delete_topology};

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

    /// Removes the binding of `queue` to `exchange` with `binding` (tests:
    /// a partition queue the router cannot reach).
    pub async fn unbind_queue(
        &self,
        queue: &str,
        exchange: &str,
        binding: &str,
    ) -> anyhow::Result<()> {
        self.channel
            .queue_unbind(
                queue.into(),
                exchange.into(),
                binding.into(),
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
