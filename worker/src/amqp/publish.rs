//! Publishing with confirms: the `publish` command's publisher and the
//! channel the worker's results go out on.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use palworker_config::{AmqpSettings, DeclareMode};

use super::connect;

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
        self.publish_with_headers(routing_key, body, content_type, user_id, &[])
            .await
    }

    /// [`Publisher::publish`] with text headers (tests: a header only the
    /// router may set).
    pub async fn publish_with_headers(
        &self,
        routing_key: &str,
        body: &[u8],
        content_type: &str,
        user_id: Option<&str>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(content_type.into());
        if let Some(user) = user_id {
            properties = properties.with_user_id(user.into());
        }
        if !headers.is_empty() {
            let mut table = lapin::types::FieldTable::default();
            for (name, value) in headers {
                table.insert(
                    (*name).into(),
                    lapin::types::AMQPValue::LongString((*value).into()),
                );
            }
            properties = properties.with_headers(table);
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
