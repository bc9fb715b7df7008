//! The local RabbitMQ through `rabbitmqctl`: broker users of their own, and a
//! sandbox — a virtual host and a user of its own — in which connections can
//! be closed and refused without touching anything else on the broker.
//! Everything created here is deleted again on drop (best effort).

use tokio::process::Command;

/// The local broker's AMQP address, without credentials and virtual host.
const BROKER_ADDRESS: &str = "127.0.0.1:5672";

/// `rabbitmqctl ARGS…`, which must succeed; its standard output.
pub async fn rabbitmqctl(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("rabbitmqctl")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| anyhow::anyhow!("rabbitmqctl does not run: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    anyhow::ensure!(
        output.status.success(),
        "rabbitmqctl {args:?} failed ({}): {stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(stdout)
}

/// `rabbitmqctl ARGS…` from a destructor: blocking, and whatever happens
/// is ignored.
fn rabbitmqctl_in_drop(args: &[&str]) {
    let _ = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output();
}

/// A broker user with every permission on the default virtual host `/`.
/// Deleted on drop.
#[derive(Debug)]
pub struct BrokerUser {
    name: String,
    password: String,
}

impl BrokerUser {
    pub async fn create(name: String, password: String) -> anyhow::Result<BrokerUser> {
        rabbitmqctl(&["add_user", &name, &password]).await?;
        // From here on, a failure still deletes the user.
        let user = BrokerUser { name, password };
        rabbitmqctl(&["set_permissions", "-p", "/", &user.name, ".*", ".*", ".*"]).await?;
        Ok(user)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// The URL that connects as this user to the default virtual host.
    pub fn amqp_url(&self) -> String {
        format!(
            "amqp://{}:{}@{BROKER_ADDRESS}/%2f",
            self.name, self.password
        )
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        rabbitmqctl_in_drop(&["delete_user", &self.name]);
    }
}

/// A virtual host of its own and a broker user for the worker in it, so
/// that closing connections and refusing new ones touches nothing else on
/// the broker. Publishers use `guest`, which the limits of the worker's user
/// do not affect. Deleted on drop.
#[derive(Debug)]
pub struct BrokerSandbox {
    vhost: String,
    user: String,
    password: String,
}

impl BrokerSandbox {
    pub async fn create() -> anyhow::Result<BrokerSandbox> {
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("palworker-broker-{unique}");
        rabbitmqctl(&["add_vhost", &name]).await?;
        let password = uuid::Uuid::new_v4().simple().to_string();
        // Deleting a user that was never added is harmless: from here on, a
        // failure still deletes the virtual host.
        let sandbox = BrokerSandbox {
            vhost: name.clone(),
            user: name,
            password,
        };
        rabbitmqctl(&["add_user", &sandbox.user, &sandbox.password]).await?;
        for user in [sandbox.user.as_str(), "guest"] {
            rabbitmqctl(&[
                "set_permissions",
                "-p",
                &sandbox.vhost,
                user,
                ".*",
                ".*",
                ".*",
            ])
            .await?;
        }
        Ok(sandbox)
    }

    pub fn vhost(&self) -> &str {
        &self.vhost
    }

    /// The worker's broker user.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The worker's URL.
    pub fn worker_url(&self) -> String {
        format!(
            "amqp://{}:{}@{BROKER_ADDRESS}/{}",
            self.user, self.password, self.vhost
        )
    }

    /// The publishers' URL (another user, unaffected by the worker's limits).
    pub fn publisher_url(&self) -> String {
        format!("amqp://guest:guest@{BROKER_ADDRESS}/{}", self.vhost)
    }
}

impl Drop for BrokerSandbox {
    fn drop(&mut self) {
        rabbitmqctl_in_drop(&["delete_vhost", &self.vhost]);
        rabbitmqctl_in_drop(&["delete_user", &self.user]);
    }
}
