//! The configuration files shipped in `config/` load as documented.

use std::path::{Path, PathBuf};
use std::time::Duration;

use palworker_config::{CredentialSecret, DeclareMode, ExposeSecret, Settings};

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

#[test]
fn development_config_loads_with_the_secret_in_the_environment() {
    let settings = Settings::load(
        Some(&shipped("palworker.toml")),
        [(
            "PALWORKER_AUTOMATION_SECRET".to_owned(),
            "dev-secret".to_owned(),
        )],
    )
    .unwrap();

    assert_eq!(
        settings.amqp.url.expose(),
        "amqp://guest:guest@127.0.0.1:5672/%2f"
    );
    assert_eq!(settings.amqp.declare, DeclareMode::Declare);
    assert_eq!(settings.pal.arm_endpoint.as_str(), "http://127.0.0.1:8080/");
    assert_eq!(settings.pal.authority.as_str(), "http://127.0.0.1:8080/");
    let automation = &settings.credentials["automation"];
    assert_eq!(automation.client_id, "11111111-1111-1111-1111-111111111111");
    match &automation.secret {
        CredentialSecret::ClientSecret(secret) => assert_eq!(secret.expose_secret(), "dev-secret"),
        other => panic!("expected a client secret, got {other:?}"),
    }
    assert_eq!(settings.ledger.path, Path::new("target/palworker-ledger"));
    assert_eq!(settings.http.listen.to_string(), "127.0.0.1:9464");
    assert!(settings.http.admin_token.is_none());
    assert!(settings.security.is_open());
    assert!(!settings.worker.dry_run);
}

#[test]
fn development_config_without_the_secret_names_the_variable() {
    let error = Settings::load(Some(&shipped("palworker.toml")), []).unwrap_err();

    assert_eq!(
        error.to_string(),
        "config key `credentials.automation.client_secret_env`: environment variable `PALWORKER_AUTOMATION_SECRET` is not set"
    );
}

/// The production example names files under /run/secrets; they are created
/// in a temporary directory and the paths rewritten.
#[test]
fn production_example_loads_with_its_secret_files() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path();
    std::fs::write(secrets.join("automation"), "prod-client-secret\n").unwrap();
    std::fs::write(
        secrets.join("automation.pem"),
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n\
         -----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    std::fs::write(secrets.join("palworker-admin-token"), "prod-admin-token\n").unwrap();
    std::fs::write(
        secrets.join("palworker-backup-token"),
        "prod-backup-token\n",
    )
    .unwrap();
    let text = std::fs::read_to_string(shipped("palworker.production.example.toml")).unwrap();
    assert!(text.contains("\"/run/secrets/"));
    let text = text.replace("\"/run/secrets/", &format!("\"{}/", secrets.display()));

    let settings = Settings::from_toml_str(&text, []).unwrap();

    assert!(settings.amqp.url.is_tls());
    assert_eq!(settings.amqp.results_exchange, "pal.lifecycle");
    assert_eq!(
        settings.amqp.url.to_string(),
        "amqps://palworker:***@rabbitmq.internal.example.com:5671/pal"
    );
    assert_eq!(
        settings.pal.arm_endpoint.as_str(),
        "https://management.azure.com/"
    );
    assert_eq!(
        settings.pal.authority.as_str(),
        "https://login.microsoftonline.com/"
    );
    assert_eq!(settings.pal.request_timeout, Duration::from_secs(30));
    assert!(matches!(
        settings.credentials["automation"].secret,
        CredentialSecret::ClientSecret(_)
    ));
    assert!(matches!(
        settings.credentials["automation-cert"].secret,
        CredentialSecret::Certificate { .. }
    ));
    assert_eq!(
        settings.http.admin_token.as_ref().unwrap().expose_secret(),
        "prod-admin-token"
    );
    let names: Vec<&str> = settings
        .http
        .admin_tokens
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(names, ["admin", "backup"]);
    assert_eq!(
        settings.http.admin_tokens["backup"].expose_secret(),
        "prod-backup-token"
    );
    assert!(settings.pal.verify_writes);
    assert!(!settings.worker.paused);
    assert_eq!(settings.ledger.retention, Duration::from_secs(90 * 86_400));
    assert_eq!(
        settings.ledger.dedup_retention,
        Duration::from_secs(400 * 86_400)
    );
    assert!(!settings.security.is_open());
    assert!(
        settings
            .security
            .allows(Some("hr-system"), "hr.employee.departed")
    );
    assert!(
        !settings
            .security
            .allows(Some("hr-system"), "partner.id.changed")
    );
}

/// The production example's commented `url_file` alternative works as its
/// comment says: `url` deleted, `url_file` uncommented, the URL read from
/// the secret file.
#[test]
fn production_example_url_file_alternative_loads_when_uncommented() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path();
    for (name, contents) in [
        ("automation", "prod-client-secret\n"),
        (
            "automation.pem",
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n\
             -----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n",
        ),
        ("palworker-admin-token", "prod-admin-token\n"),
        ("palworker-backup-token", "prod-backup-token\n"),
        (
            "amqp-url",
            "amqps://palworker:from-a-file@rabbitmq.internal.example.com:5671/pal\n",
        ),
    ] {
        std::fs::write(secrets.join(name), contents).unwrap();
    }
    let text = std::fs::read_to_string(shipped("palworker.production.example.toml")).unwrap();
    let text: String = text
        .lines()
        .filter(|line| !line.starts_with("url = "))
        .map(|line| {
            line.strip_prefix("# url_file = ")
                .map_or(line.to_owned(), |rest| format!("url_file = {rest}"))
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        text.contains("\nurl_file = "),
        "the example mentions url_file"
    );
    let text = text.replace("\"/run/secrets/", &format!("\"{}/", secrets.display()));

    let settings = Settings::from_toml_str(&text, []).unwrap();

    assert_eq!(
        settings.amqp.url.expose(),
        "amqps://palworker:from-a-file@rabbitmq.internal.example.com:5671/pal"
    );
}
