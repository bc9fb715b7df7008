//! Unit tests: loading, overriding, refusing, redacting. No network, no
//! clock; files only in temporary directories.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use secrecy::ExposeSecret;

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect()
}

fn write_file(dir: &Path, name: &str, contents: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(contents.as_bytes()).unwrap();
    path
}

/// SPEC §6's example, with the secret file's path as a placeholder.
const SPEC_EXAMPLE: &str = r#"
[amqp]
url = "amqp://guest:guest@127.0.0.1:5672/%2f"   # amqps:// for TLS
exchange = "pal.lifecycle"
queue = "palworker.events"
dead_letter_exchange = "pal.lifecycle.dlx"
dead_letter_queue = "palworker.dead"
prefetch = 64
max_message_bytes = 262144

[pal]
arm_endpoint = "https://management.azure.com"
authority = "https://login.microsoftonline.com"
api_version = "2018-02-01"
request_timeout = "30s"
# plain http is refused except for loopback hosts (simulator, tests)

[credentials.automation]            # any number of named credentials
client_id = "00000000-0000-0000-0000-000000000000"
client_secret_file = "SECRET_FILE"   # or client_secret_env = "VAR"
# or, instead of a secret, a certificate (signed client assertion):
# certificate_file = "/run/secrets/automation.pem"  # PEM certificate + private key

[ledger]
path = "/var/lib/palworker/ledger"  # sled directory

[retry]
initial_interval = "1s"
multiplier = 2.0
max_interval = "5m"
max_elapsed = "24h"
jitter = 0.2

[limits]
concurrency = 64                   # actions in flight
per_tenant_rps = 20.0               # PAL requests/s per tenant, all identities together
max_actions_per_event = 500        # larger plans are held for approval

[worker]
dry_run = false                    # plan and record, never write to PAL

[http]
listen = "127.0.0.1:9464"          # /metrics, /healthz, /readyz, admin API

[security]
# broker-validated AMQP user_id -> event type prefixes it may publish;
# empty table = any publisher (development only; a warning is logged)
[security.publishers]
hr-system = ["hr."]
project-system = ["project.", "partner."]
"#;

#[test]
fn defaults_load_without_a_file() {
    let settings = Settings::load(None, env(&[])).unwrap();

    assert_eq!(
        settings.amqp.url.expose(),
        "amqp://guest:guest@127.0.0.1:5672/%2f"
    );
    assert!(!settings.amqp.url.is_tls());
    assert_eq!(settings.amqp.exchange, "pal.lifecycle");
    assert_eq!(settings.amqp.queue, "palworker.events");
    assert_eq!(settings.amqp.dead_letter_exchange, "pal.lifecycle.dlx");
    assert_eq!(settings.amqp.dead_letter_queue, "palworker.dead");
    assert_eq!(
        settings.amqp.results_exchange, "pal.lifecycle",
        "results go to the events exchange by default"
    );
    assert_eq!(settings.amqp.prefetch, 64);
    assert_eq!(settings.amqp.max_message_bytes, 262_144);
    assert_eq!(settings.amqp.declare, DeclareMode::Declare);
    assert_eq!(settings.amqp.reconnect_initial, Duration::from_secs(1));
    assert_eq!(settings.amqp.reconnect_max, Duration::from_secs(30));

    assert_eq!(
        settings.pal.arm_endpoint.as_str(),
        "https://management.azure.com/"
    );
    assert_eq!(
        settings.pal.authority.as_str(),
        "https://login.microsoftonline.com/"
    );
    assert_eq!(settings.pal.api_version, "2018-02-01");
    assert_eq!(settings.pal.request_timeout, Duration::from_secs(30));

    assert!(settings.credentials.is_empty());

    assert_eq!(settings.ledger.path, Path::new("/var/lib/palworker/ledger"));
    assert_eq!(settings.ledger.cache_capacity_bytes, 16 * 1024 * 1024);

    assert_eq!(
        settings.retry,
        RetrySettings {
            initial_interval: Duration::from_secs(1),
            multiplier: 2.0,
            max_interval: Duration::from_secs(300),
            max_elapsed: Duration::from_secs(86_400),
            jitter: 0.2,
        }
    );
    assert_eq!(
        settings.limits,
        LimitsSettings {
            concurrency: 64,
            per_tenant_rps: 20.0,
            max_actions_per_event: 500,
        }
    );
    assert_eq!(
        settings.worker,
        WorkerSettings {
            dry_run: false,
            paused: false,
            shutdown_grace: Duration::from_secs(20),
        }
    );
    assert_eq!(
        settings.http.listen,
        "127.0.0.1:9464".parse::<SocketAddr>().unwrap()
    );
    assert!(settings.http.admin_token.is_none());
    assert!(settings.security.is_open());
}

#[test]
fn empty_toml_gives_the_same_defaults_as_no_file() {
    let from_text = Settings::from_toml_str("", env(&[])).unwrap();
    let from_nothing = Settings::load(None, env(&[])).unwrap();
    assert_eq!(format!("{from_text:?}"), format!("{from_nothing:?}"));
}

#[test]
fn spec_example_loads() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write_file(dir.path(), "automation", "s3cr3t-value\n");
    let toml = SPEC_EXAMPLE.replace("SECRET_FILE", secret.to_str().unwrap());

    let settings = Settings::from_toml_str(&toml, env(&[])).unwrap();

    let automation = &settings.credentials["automation"];
    assert_eq!(automation.client_id, "00000000-0000-0000-0000-000000000000");
    match &automation.secret {
        // The trailing newline of the file is not part of the secret.
        CredentialSecret::ClientSecret(secret) => {
            assert_eq!(secret.expose_secret(), "s3cr3t-value")
        }
        other => panic!("expected a client secret, got {other:?}"),
    }
    assert_eq!(settings.amqp.prefetch, 64);
    assert_eq!(settings.retry.max_elapsed, Duration::from_secs(86_400));
    assert_eq!(settings.security.publishers.len(), 2);
    assert_eq!(
        settings.security.publishers["project-system"],
        vec!["project.".to_owned(), "partner.".to_owned()]
    );
    assert!(!settings.security.is_open());
}

#[test]
fn load_reads_the_named_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(
        dir.path(),
        "palworker.toml",
        "[limits]\nconcurrency = 3\n[worker]\ndry_run = true\n",
    );

    let settings = Settings::load(Some(&path), env(&[])).unwrap();

    assert_eq!(settings.limits.concurrency, 3);
    assert!(settings.worker.dry_run);
}

#[test]
fn environment_overrides_beat_toml() {
    let toml = r#"
[amqp]
prefetch = 64
declare = "declare"
[pal]
arm_endpoint = "https://management.azure.com"
[credentials.automation]
client_id = "from-toml"
client_secret_env = "AUTOMATION_SECRET"
[retry]
initial_interval = "1s"
jitter = 0.2
[limits]
per_tenant_rps = 20.0
[worker]
dry_run = false
[http]
listen = "127.0.0.1:9464"
"#;
    type Check = fn(&Settings);
    let cases: &[(&str, &str, Check)] = &[
        ("PALWORKER__AMQP__PREFETCH", "10", |s| {
            assert_eq!(s.amqp.prefetch, 10)
        }),
        ("PALWORKER__AMQP__DECLARE", "passive", |s| {
            assert_eq!(s.amqp.declare, DeclareMode::Passive)
        }),
        ("PALWORKER__AMQP__RESULTS_EXCHANGE", "pal.results", |s| {
            assert_eq!(s.amqp.results_exchange, "pal.results");
            assert_eq!(s.amqp.exchange, "pal.lifecycle");
        }),
        (
            "PALWORKER__AMQP__URL",
            "amqps://worker:pw@rabbit.example.com/prod",
            |s| {
                assert!(s.amqp.url.is_tls());
                assert_eq!(
                    s.amqp.url.expose(),
                    "amqps://worker:pw@rabbit.example.com/prod"
                );
            },
        ),
        (
            "PALWORKER__PAL__ARM_ENDPOINT",
            "http://localhost:8080",
            |s| assert_eq!(s.pal.arm_endpoint.as_str(), "http://localhost:8080/"),
        ),
        ("PALWORKER__RETRY__INITIAL_INTERVAL", "500ms", |s| {
            assert_eq!(s.retry.initial_interval, Duration::from_millis(500))
        }),
        // Exact, not the f32 rounding of 0.35.
        ("PALWORKER__RETRY__JITTER", "0.35", |s| {
            assert_eq!(s.retry.jitter, 0.35)
        }),
        ("PALWORKER__LIMITS__PER_TENANT_RPS", "5", |s| {
            assert_eq!(s.limits.per_tenant_rps, 5.0)
        }),
        ("PALWORKER__WORKER__DRY_RUN", "true", |s| {
            assert!(s.worker.dry_run)
        }),
        ("PALWORKER__HTTP__LISTEN", "0.0.0.0:9000", |s| {
            assert_eq!(s.http.listen.port(), 9000)
        }),
        (
            "PALWORKER__CREDENTIALS__AUTOMATION__CLIENT_ID",
            "from-env",
            |s| assert_eq!(s.credentials["automation"].client_id, "from-env"),
        ),
        // A numeric-looking value stays text for a text key.
        (
            "PALWORKER__CREDENTIALS__AUTOMATION__CLIENT_ID",
            "12345",
            |s| assert_eq!(s.credentials["automation"].client_id, "12345"),
        ),
        // Section and key are case-insensitive.
        ("palworker__Limits__Concurrency", "7", |s| {
            assert_eq!(s.limits.concurrency, 7)
        }),
        (
            "PALWORKER__SECURITY__PUBLISHERS__HR-SYSTEM",
            r#"["hr.", "project."]"#,
            |s| {
                assert_eq!(
                    s.security.publishers["hr-system"],
                    vec!["hr.".to_owned(), "project.".to_owned()]
                )
            },
        ),
        // Not a PALWORKER__ variable: ignored, however it looks.
        ("PALWORKER_LIMITS__CONCURRENCY", "not even a number", |s| {
            assert_eq!(s.limits.concurrency, 64)
        }),
    ];

    for (name, value, check) in cases {
        let settings =
            Settings::from_toml_str(toml, env(&[(name, value), ("AUTOMATION_SECRET", "secret")]))
                .unwrap_or_else(|error| panic!("{name}={value}: {error}"));
        check(&settings);
    }
}

#[test]
fn environment_alone_can_add_a_credential() {
    let settings = Settings::load(
        None,
        env(&[
            ("PALWORKER__CREDENTIALS__OPS__CLIENT_ID", "client"),
            (
                "PALWORKER__CREDENTIALS__OPS__CLIENT_SECRET_ENV",
                "OPS_SECRET",
            ),
            ("OPS_SECRET", "  hunter2\n"),
        ]),
    )
    .unwrap();

    let ops = &settings.credentials["ops"];
    assert_eq!(ops.client_id, "client");
    match &ops.secret {
        CredentialSecret::ClientSecret(secret) => assert_eq!(secret.expose_secret(), "hunter2"),
        other => panic!("expected a client secret, got {other:?}"),
    }
}

/// Each refused configuration, with the exact one-line message and the key
/// `ConfigError::key` reports.
#[test]
fn invalid_configs_are_refused_naming_the_key() {
    struct Case {
        toml: &'static str,
        env: &'static [(&'static str, &'static str)],
        message: &'static str,
        key: Option<&'static str>,
    }
    let cases = [
        Case {
            toml: "[retry]\ninitial_interval = \"5 parsecs\"",
            env: &[],
            message: "config key `retry.initial_interval`: invalid duration \"5 parsecs\": unknown unit \"parsecs\" (expected e.g. \"500ms\", \"30s\", \"5m\", \"24h\")",
            key: Some("retry.initial_interval"),
        },
        Case {
            toml: "[pal]\nrequest_timeout = 30",
            env: &[],
            message: "config key `pal.request_timeout`: invalid type: found integer `30`, expected a duration such as \"500ms\", \"30s\", \"5m\" or \"24h\"",
            key: Some("pal.request_timeout"),
        },
        Case {
            toml: "[retry]\nmultiplier = 0.5",
            env: &[],
            message: "config key `retry.multiplier`: must be at least 1.0 (got 0.5)",
            key: Some("retry.multiplier"),
        },
        Case {
            toml: "[retry]\njitter = 1.5",
            env: &[],
            message: "config key `retry.jitter`: must be between 0.0 and 1.0 (got 1.5)",
            key: Some("retry.jitter"),
        },
        Case {
            toml: "[retry]\ninitial_interval = \"10m\"\nmax_interval = \"5m\"",
            env: &[],
            message: "config key `retry.initial_interval`: must not be longer than retry.max_interval = 5m (got 10m)",
            key: Some("retry.initial_interval"),
        },
        Case {
            toml: "[limits]\nconcurrency = 0",
            env: &[],
            message: "config key `limits.concurrency`: must be at least 1 (got 0)",
            key: Some("limits.concurrency"),
        },
        Case {
            toml: "[limits]\nper_tenant_rps = 0",
            env: &[],
            message: "config key `limits.per_tenant_rps`: must be a positive finite number (got 0)",
            key: Some("limits.per_tenant_rps"),
        },
        Case {
            toml: "[pal]\narm_endpoint = \"http://example.com\"",
            env: &[],
            message: "config key `pal.arm_endpoint`: plain http is refused for non-loopback host `example.com` (use https)",
            key: Some("pal.arm_endpoint"),
        },
        Case {
            toml: "[pal]\nauthority = \"ftp://login.example.com\"",
            env: &[],
            message: "config key `pal.authority`: must be an https URL (got scheme `ftp`)",
            key: Some("pal.authority"),
        },
        Case {
            toml: "[amqp]\nurl = \"http://guest:hunter2@127.0.0.1:5672/\"",
            env: &[],
            message: "config key `amqp.url`: must start with amqp:// or amqps:// (got scheme `http`)",
            key: Some("amqp.url"),
        },
        Case {
            toml: "[amqp]\nprefetch = 70000",
            env: &[],
            message: "config key `amqp.prefetch`: invalid value: found integer `70000`, expected an integer from 0 to 65535",
            key: Some("amqp.prefetch"),
        },
        Case {
            toml: "[amqp]\ndeclare = \"maybe\"",
            env: &[],
            message: "config key `amqp.declare`: unknown value `maybe` (expected `declare` or `passive`)",
            key: Some("amqp.declare"),
        },
        Case {
            toml: "[amqp]\ndead_letter_queue = \"palworker.events\"",
            env: &[],
            message: "config key `amqp.dead_letter_queue`: must differ from amqp.queue (both are `palworker.events`)",
            key: Some("amqp.dead_letter_queue"),
        },
        Case {
            toml: "[amqp]\nresults_exchange = \"pal.lifecycle.dlx\"",
            env: &[],
            message: "config key `amqp.results_exchange`: must differ from amqp.dead_letter_exchange (both are `pal.lifecycle.dlx`)",
            key: Some("amqp.results_exchange"),
        },
        Case {
            toml: "[amqp]\nresults_exchange = \" \"",
            env: &[],
            message: "config key `amqp.results_exchange`: must not be empty",
            key: Some("amqp.results_exchange"),
        },
        Case {
            toml: "[credentials.automation]\nclient_id = \"x\"\nclient_secret_env = \"A\"\nclient_secret_file = \"/run/secrets/a\"",
            env: &[("A", "secret")],
            message: "config key `credentials.automation`: set exactly one of `client_secret_file`, `client_secret_env` or `certificate_file` (found `client_secret_file` and `client_secret_env`)",
            key: Some("credentials.automation"),
        },
        Case {
            toml: "[credentials.automation]\nclient_id = \"x\"",
            env: &[],
            message: "config key `credentials.automation`: set exactly one of `client_secret_file`, `client_secret_env` or `certificate_file` (none is set)",
            key: Some("credentials.automation"),
        },
        Case {
            toml: "[credentials.automation]\nclient_id = \"x\"\nclient_secret_file = \"/nonexistent/palworker/automation\"",
            env: &[],
            message: "config key `credentials.automation.client_secret_file`: cannot read `/nonexistent/palworker/automation`: No such file or directory (os error 2)",
            key: Some("credentials.automation.client_secret_file"),
        },
        Case {
            toml: "[credentials.automation]\nclient_id = \"x\"\nclient_secret_env = \"AUTOMATION_SECRET\"",
            env: &[],
            message: "config key `credentials.automation.client_secret_env`: environment variable `AUTOMATION_SECRET` is not set",
            key: Some("credentials.automation.client_secret_env"),
        },
        Case {
            toml: "[credentials.automation]\nclient_id = \"x\"\nclient_secret_env = \"AUTOMATION_SECRET\"",
            env: &[("AUTOMATION_SECRET", " \n")],
            message: "config key `credentials.automation.client_secret_env`: environment variable `AUTOMATION_SECRET` is empty",
            key: Some("credentials.automation.client_secret_env"),
        },
        Case {
            toml: "[credentials.automation]\nclient_secret_env = \"AUTOMATION_SECRET\"",
            env: &[("AUTOMATION_SECRET", "secret")],
            message: "config key `credentials.automation.client_id`: missing (it has no default)",
            key: Some("credentials.automation.client_id"),
        },
        Case {
            toml: "[amqp]\nprefetchh = 10",
            env: &[],
            message: "config key `amqp.prefetchh`: unknown key (expected one of `url`, `url_file`, `exchange`, `queue`, `dead_letter_exchange`, `dead_letter_queue`, `results_exchange`, `prefetch`, `max_message_bytes`, `delivery_limit`, `declare`, `reconnect_initial` or `reconnect_max`)",
            key: Some("amqp.prefetchh"),
        },
        Case {
            toml: "[limit]\nconcurrency = 10",
            env: &[],
            message: "config key `limit`: unknown key (expected one of `amqp`, `pal`, `credentials`, `ledger`, `retry`, `limits`, `worker`, `http`, `security`, `audit`, `reconcile` or `partitions`)",
            key: Some("limit"),
        },
        Case {
            toml: "",
            env: &[("PALWORKER__LIMITS__CONCURRENCY", "x")],
            message: "config key `limits.concurrency`: invalid type: found string \"x\", expected an integer",
            key: Some("limits.concurrency"),
        },
        Case {
            toml: "",
            env: &[("PALWORKER__WORKER__DRY_RUN", "sometimes")],
            message: "config key `worker.dry_run`: invalid type: found string \"sometimes\", expected a boolean",
            key: Some("worker.dry_run"),
        },
        Case {
            toml: "",
            env: &[("PALWORKER__RETRY__MULTIPLIER", "double")],
            message: "config key `retry.multiplier`: invalid type: found string \"double\", expected a number",
            key: Some("retry.multiplier"),
        },
        Case {
            toml: "",
            env: &[("PALWORKER__WORKER__DRYRUN", "true")],
            message: "config key `worker.dryrun`: unknown key (expected one of `dry_run`, `paused` or `shutdown_grace`)",
            key: Some("worker.dryrun"),
        },
        Case {
            toml: "",
            env: &[("PALWORKER__LIMITS_CONCURRENCY", "3")],
            message: "config key `limits_concurrency`: unknown key (expected one of `amqp`, `pal`, `credentials`, `ledger`, `retry`, `limits`, `worker`, `http`, `security`, `audit`, `reconcile` or `partitions`)",
            key: Some("limits_concurrency"),
        },
        Case {
            toml: "",
            env: &[("PALWORKER__LIMITS____CONCURRENCY", "3")],
            message: "environment variable `PALWORKER__LIMITS____CONCURRENCY`: expected PALWORKER__SECTION__KEY, with no empty part between `__`",
            key: None,
        },
        Case {
            toml: "",
            env: &[
                ("PALWORKER__LIMITS__CONCURRENCY", "3"),
                ("palworker__limits__concurrency", "4"),
            ],
            message: "environment variable `palworker__limits__concurrency`: sets the same key as `PALWORKER__LIMITS__CONCURRENCY`",
            key: None,
        },
        Case {
            toml: "[http]\nlisten = \"localhost:9464\"",
            env: &[],
            message: "config key `http.listen`: invalid socket address \"localhost:9464\" (expected IP:PORT, e.g. \"127.0.0.1:9464\" or \"[::1]:9464\")",
            key: Some("http.listen"),
        },
        Case {
            toml: "[http]\nadmin_token_env = \"T\"\nadmin_token_file = \"/run/secrets/t\"",
            env: &[("T", "token")],
            message: "config key `http`: set at most one of `admin_token_file` or `admin_token_env` (found both)",
            key: Some("http"),
        },
        Case {
            toml: "[security.publishers]\nhr-system = [\"\"]",
            env: &[],
            message: "config key `security.publishers.hr-system`: an event type prefix must not be empty (it would allow every type)",
            key: Some("security.publishers.hr-system"),
        },
        Case {
            toml: "[security.publishers]\nhr-system = \"hr.\"",
            env: &[],
            message: "config key `security.publishers.hr-system`: invalid type: found string \"hr.\", expected a list",
            key: Some("security.publishers.hr-system"),
        },
        Case {
            toml: "[partitions]\ncount = 0",
            env: &[],
            message: "config key `partitions.count`: the partition count must be at least 1",
            key: Some("partitions.count"),
        },
        Case {
            toml: "[partitions]\ncount = 3\nindex = 3",
            env: &[],
            message: "config key `partitions.index`: partition index 3 is outside 0..3",
            key: Some("partitions.index"),
        },
        Case {
            toml: "[partitions]\ncount = 3\nadmin_urls = [\"http://p0:9090\"]",
            env: &[],
            message: "config key `partitions.admin_urls`: lists 1 URL(s); it must list one per partition (partitions.count = 3) or none",
            key: Some("partitions.admin_urls"),
        },
        Case {
            toml: "[partitions]\ncount = 2\nadmin_urls = [\"http://p0:9090\", \"ftp://p1\"]",
            env: &[],
            message: "config key `partitions.admin_urls[1]`: must be http:// or https:// (got `ftp`)",
            key: Some("partitions.admin_urls[1]"),
        },
        Case {
            toml: "[partitions]\ncount = 1\nadmin_urls = [\"http://ops:s3cret@p0:9090\"]",
            env: &[],
            message: "config key `partitions.admin_urls[0]`: must not carry a query or credentials (the admin token is configured in http.admin_tokens)",
            key: Some("partitions.admin_urls[0]"),
        },
        Case {
            toml: "[partitions]\ncount = 2\n[security.publishers]\nhr-system = [\"hr.\"]",
            env: &[],
            message: "config key `partitions.router_user`: is required when partitions.count > 1 and security.publishers is set: a partition checks the original publisher the router forwards only from the router's own broker user",
            key: Some("partitions.router_user"),
        },
        Case {
            toml: "[partitions]\nindex = \"one\"",
            env: &[],
            message: "config key `partitions.index`: invalid type: found string \"one\", expected an integer",
            key: Some("partitions.index"),
        },
        Case {
            toml: "[limits]\nconcurrency = 1\nconcurrency = 2",
            env: &[],
            message: "config text: TOML parse error at line 3, column 1: duplicate key `concurrency` in table `limits`",
            key: None,
        },
    ];

    for case in cases {
        let error = Settings::from_toml_str(case.toml, env(case.env)).expect_err(case.message);
        assert_eq!(error.to_string(), case.message, "for {:?}", case.toml);
        assert_eq!(error.key(), case.key, "for {:?}", case.toml);
        assert!(!case.message.contains('\n'));
    }
}

#[test]
fn a_missing_config_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.toml");

    let error = Settings::load(Some(&path), env(&[])).unwrap_err();

    assert_eq!(
        error.to_string(),
        format!("config file `{}`: not found", path.display())
    );
    assert!(matches!(error, ConfigError::FileNotFound { .. }));
}

#[test]
fn a_toml_syntax_error_names_the_file_and_line_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(
        dir.path(),
        "x.toml",
        "[amqp]\nprefetch = 10\nqueue = unquoted\n",
    );

    let message = Settings::load(Some(&path), env(&[]))
        .unwrap_err()
        .to_string();

    let expected_start = format!(
        "config file `{}`: TOML parse error at line 3, column 9: ",
        path.display()
    );
    assert!(message.starts_with(&expected_start), "{message}");
    assert!(!message.contains('\n'), "{message}");
}

#[test]
fn amqp_errors_never_repeat_the_password() {
    for url in [
        "http://guest:hunter2@127.0.0.1:5672/",
        "amqp://guest:hunter2@127.0.0.1:notaport/",
        "amqp://guest:hunter2@/vhost",
    ] {
        let toml = format!("[amqp]\nurl = {url:?}");
        let message = Settings::from_toml_str(&toml, env(&[]))
            .unwrap_err()
            .to_string();
        assert!(message.starts_with("config key `amqp.url`: "), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }
}

#[test]
fn amqp_url_can_come_from_a_file_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(
        dir.path(),
        "amqp-url",
        "  amqps://worker:file-password-8e7d@rabbit.example.com:5671/prod\n",
    );
    let toml = format!("[amqp]\nurl_file = {path:?}");

    let settings = Settings::from_toml_str(&toml, env(&[])).unwrap();

    assert_eq!(
        settings.amqp.url.expose(),
        "amqps://worker:file-password-8e7d@rabbit.example.com:5671/prod"
    );
    assert!(settings.amqp.url.is_tls());
    assert_eq!(
        settings.amqp.url.to_string(),
        "amqps://worker:***@rabbit.example.com:5671/prod"
    );
    assert!(!format!("{settings:?}").contains("file-password-8e7d"));

    // The environment can name the file too.
    let from_env = Settings::from_toml_str(
        "",
        env(&[("PALWORKER__AMQP__URL_FILE", path.to_str().unwrap())]),
    )
    .unwrap();
    assert_eq!(from_env.amqp.url, settings.amqp.url);
}

/// `amqp.url_file`'s refusals name the key (and the file, never its
/// contents, which hold the broker password).
#[test]
fn amqp_url_file_problems_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-file");
    let empty = write_file(dir.path(), "empty", "\n");
    let not_amqp = write_file(dir.path(), "http", "http://guest:hunter2@127.0.0.1:5672/\n");
    let no_host = write_file(dir.path(), "no-host", "amqp://guest:hunter2@/vhost");
    let not_a_url = write_file(dir.path(), "words", "broker password hunter2");
    let good = write_file(
        dir.path(),
        "good",
        "amqp://guest:hunter2@127.0.0.1:5672/%2f",
    );
    let cases = [
        (
            format!("[amqp]\nurl_file = {missing:?}"),
            env(&[]),
            format!(
                "config key `amqp.url_file`: cannot read `{}`: No such file or directory (os error 2)",
                missing.display()
            ),
        ),
        (
            format!("[amqp]\nurl_file = {empty:?}"),
            env(&[]),
            format!("config key `amqp.url_file`: `{}` is empty", empty.display()),
        ),
        (
            format!("[amqp]\nurl_file = {not_amqp:?}"),
            env(&[]),
            format!(
                "config key `amqp.url_file`: `{}`: must start with amqp:// or amqps:// (got scheme `http`)",
                not_amqp.display()
            ),
        ),
        (
            format!("[amqp]\nurl_file = {no_host:?}"),
            env(&[]),
            format!(
                "config key `amqp.url_file`: `{}`: not a valid URL: empty host",
                no_host.display()
            ),
        ),
        (
            format!("[amqp]\nurl_file = {not_a_url:?}"),
            env(&[]),
            format!(
                "config key `amqp.url_file`: `{}`: not a valid URL: relative URL without a base",
                not_a_url.display()
            ),
        ),
        (
            format!("[amqp]\nurl = \"amqp://127.0.0.1\"\nurl_file = {good:?}"),
            env(&[]),
            "config key `amqp.url_file`: set either amqp.url or amqp.url_file, not both".to_owned(),
        ),
        (
            format!("[amqp]\nurl_file = {good:?}"),
            env(&[("PALWORKER__AMQP__URL", "amqp://127.0.0.1")]),
            "config key `amqp.url_file`: set either amqp.url or amqp.url_file, not both".to_owned(),
        ),
    ];
    for (toml, env, expected) in cases {
        let error = Settings::from_toml_str(&toml, env).unwrap_err();
        assert_eq!(error.to_string(), expected, "{toml}");
        assert_eq!(error.key(), Some("amqp.url_file"), "{toml}");
        assert!(!error.to_string().contains("hunter2"), "{error}");
    }
}

#[test]
fn plain_http_is_allowed_to_loopback_hosts_only() {
    let accepted = [
        ("http://localhost:8080", "http://localhost:8080/"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080/"),
        ("http://127.1.2.3", "http://127.1.2.3/"),
        ("http://[::1]:8080", "http://[::1]:8080/"),
        // A path prefix keeps a trailing slash, so joins append to it.
        ("http://127.0.0.1:8080/pal", "http://127.0.0.1:8080/pal/"),
        ("https://example.com/base/", "https://example.com/base/"),
    ];
    for (given, normalized) in accepted {
        let toml = format!("[pal]\narm_endpoint = {given:?}\nauthority = {given:?}");
        let settings = Settings::from_toml_str(&toml, env(&[]))
            .unwrap_or_else(|error| panic!("{given}: {error}"));
        assert_eq!(settings.pal.arm_endpoint.as_str(), normalized);
        assert_eq!(settings.pal.authority.as_str(), normalized);
    }

    let joined = Settings::from_toml_str(
        "[pal]\narm_endpoint = \"http://127.0.0.1:8080/pal\"",
        env(&[]),
    )
    .unwrap()
    .pal
    .arm_endpoint
    .join("providers/Microsoft.ManagementPartner/partners")
    .unwrap();
    assert_eq!(
        joined.as_str(),
        "http://127.0.0.1:8080/pal/providers/Microsoft.ManagementPartner/partners"
    );

    for refused in [
        "http://10.0.0.1",
        "http://[::2]",
        "http://localhost.example.com",
        "http://0.0.0.0",
    ] {
        let toml = format!("[pal]\nauthority = {refused:?}");
        let message = Settings::from_toml_str(&toml, env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("config key `pal.authority`: plain http is refused"),
            "{refused}: {message}"
        );
    }
}

#[test]
fn debug_output_never_shows_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let token = write_file(dir.path(), "admin-token", "admin-token-value-9f8e\n");
    let pem = write_file(
        dir.path(),
        "cert.pem",
        "-----BEGIN CERTIFICATE-----\nCERTIFICATE-BYTES-7d6c\n-----END CERTIFICATE-----\n\
         -----BEGIN PRIVATE KEY-----\nPRIVATE-KEY-BYTES-5b4a\n-----END PRIVATE KEY-----\n",
    );
    let toml = format!(
        r#"
[amqp]
url = "amqps://worker:amqp-password-3c2b@rabbit.example.com:5671/prod"
[credentials.automation]
client_id = "client"
client_secret_env = "AUTOMATION_SECRET"
[credentials.certified]
client_id = "client2"
certificate_file = {pem:?}
[http]
admin_token_file = {token:?}
"#
    );
    let settings = Settings::from_toml_str(
        &toml,
        env(&[("AUTOMATION_SECRET", "client-secret-value-1a09")]),
    )
    .unwrap();

    let debug = format!("{settings:?}");
    let pretty = format!("{settings:#?}");
    let display = settings.amqp.url.to_string();
    for secret in [
        "amqp-password-3c2b",
        "client-secret-value-1a09",
        "admin-token-value-9f8e",
        "CERTIFICATE-BYTES-7d6c",
        "PRIVATE-KEY-BYTES-5b4a",
    ] {
        assert!(!debug.contains(secret), "{secret} in {debug}");
        assert!(!pretty.contains(secret), "{secret} in {pretty}");
        assert!(!display.contains(secret), "{secret} in {display}");
    }
    // The secrets are there, just not printed.
    assert_eq!(
        settings.http.admin_token.as_ref().unwrap().expose_secret(),
        "admin-token-value-9f8e"
    );
    assert_eq!(display, "amqps://worker:***@rabbit.example.com:5671/prod");
    assert!(debug.contains("AmqpUrl(\"amqps://worker:***@rabbit.example.com:5671/prod\")"));
}

#[test]
fn amqp_url_reports_tls_and_keeps_the_original_text() {
    let plain: AmqpUrl = "amqp://guest:guest@127.0.0.1:5672/%2f".parse().unwrap();
    assert!(!plain.is_tls());
    assert_eq!(plain.expose(), "amqp://guest:guest@127.0.0.1:5672/%2f");
    assert_eq!(plain.to_string(), "amqp://guest:***@127.0.0.1:5672/%2f");

    let tls = AmqpUrl::parse("amqps://rabbit.example.com").unwrap();
    assert!(tls.is_tls());
    // Nothing to hide, nothing changed.
    assert_eq!(tls.to_string(), "amqps://rabbit.example.com");
}

#[test]
fn certificate_credentials_need_a_certificate_and_a_private_key() {
    const CERTIFICATE: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";
    const RSA_KEY: &str = "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\n";
    const ENCRYPTED_KEY: &str =
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIE\n-----END ENCRYPTED PRIVATE KEY-----\n";

    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, Option<&str>); 5] = [
        (&format!("{CERTIFICATE}{KEY}"), None),
        (&format!("{RSA_KEY}{CERTIFICATE}"), None),
        (
            KEY,
            Some("holds no PEM certificate (-----BEGIN CERTIFICATE-----)"),
        ),
        (
            CERTIFICATE,
            Some(
                "holds no PEM private key (-----BEGIN PRIVATE KEY----- or -----BEGIN RSA PRIVATE KEY-----)",
            ),
        ),
        (
            &format!("{CERTIFICATE}{ENCRYPTED_KEY}"),
            Some("holds an encrypted private key, which is not supported"),
        ),
    ];
    for (contents, refusal) in cases {
        let path = write_file(dir.path(), "automation.pem", contents);
        let toml = format!(
            "[credentials.automation]\nclient_id = \"client\"\ncertificate_file = {path:?}"
        );
        let result = Settings::from_toml_str(&toml, env(&[]));
        match (result, refusal) {
            (Ok(settings), None) => match &settings.credentials["automation"].secret {
                CredentialSecret::Certificate {
                    pem,
                    path: read_from,
                } => {
                    assert_eq!(pem.expose_secret(), contents);
                    assert_eq!(read_from, &path);
                }
                other => panic!("expected a certificate, got {other:?}"),
            },
            (Err(error), Some(reason)) => assert_eq!(
                error.to_string(),
                format!(
                    "config key `credentials.automation.certificate_file`: `{}` {reason}",
                    path.display()
                )
            ),
            (result, refusal) => panic!("{contents}: expected {refusal:?}, got {result:?}"),
        }
    }
}

#[test]
fn an_empty_secret_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "automation", "\n");
    let toml =
        format!("[credentials.automation]\nclient_id = \"client\"\nclient_secret_file = {path:?}");

    let error = Settings::from_toml_str(&toml, env(&[])).unwrap_err();

    assert_eq!(
        error.to_string(),
        format!(
            "config key `credentials.automation.client_secret_file`: `{}` is empty",
            path.display()
        )
    );
}

#[test]
fn admin_token_comes_from_the_given_environment() {
    let settings = Settings::from_toml_str(
        "[http]\nadmin_token_env = \"PALWORKER_ADMIN_TOKEN\"",
        env(&[("PALWORKER_ADMIN_TOKEN", "tok")]),
    )
    .unwrap();
    assert_eq!(settings.http.admin_token.unwrap().expose_secret(), "tok");
}

#[test]
fn publishers_allow_list() {
    let settings = Settings::from_toml_str(
        "[security.publishers]\nhr-system = [\"hr.\"]\nproject-system = [\"project.\", \"partner.\"]\nmuted = []",
        env(&[]),
    )
    .unwrap();
    let security = &settings.security;
    assert!(!security.is_open());

    let cases = [
        (Some("hr-system"), "hr.employee.departed", true),
        (Some("hr-system"), "project.assignment.started", false),
        (Some("project-system"), "project.assignment.started", true),
        (Some("project-system"), "partner.id.changed", true),
        (Some("project-system"), "hr.employee.departed", false),
        // A prefix is matched as written: "hr." does not match "hrx.".
        (Some("hr-system"), "hrx.employee.departed", false),
        (Some("muted"), "hr.employee.departed", false),
        (Some("stranger"), "hr.employee.departed", false),
        // User ids are matched exactly.
        (Some("HR-SYSTEM"), "hr.employee.departed", false),
        (None, "hr.employee.departed", false),
    ];
    for (user_id, event_type, allowed) in cases {
        assert_eq!(
            security.allows(user_id, event_type),
            allowed,
            "{user_id:?} publishing {event_type}"
        );
    }

    let open = SecuritySettings::default();
    assert!(open.is_open());
    assert!(open.allows(None, "hr.employee.departed"));
    assert!(open.allows(Some("anyone"), "anything"));
}

#[test]
fn a_toml_overlay_merges_tables_and_replaces_values() {
    let layered = Settings::layer_toml(
        "[amqp]\nprefetch = 8\nqueue = \"q\"\n[limits]\nconcurrency = 4\n",
        "[amqp]\nprefetch = 16\n[worker]\ndry_run = true\n",
    )
    .unwrap();
    let settings = Settings::from_toml_str(&layered, []).unwrap();
    assert_eq!(settings.amqp.prefetch, 16);
    assert_eq!(settings.amqp.queue, "q");
    assert_eq!(settings.limits.concurrency, 4);
    assert!(settings.worker.dry_run);
    assert!(matches!(
        Settings::layer_toml("[amqp", ""),
        Err(ConfigError::Syntax { .. })
    ));
}

#[test]
fn retention_defaults_and_limits() {
    let settings = Settings::from_toml_str("", []).unwrap();
    assert_eq!(
        settings.ledger.retention,
        Duration::from_secs(90 * 24 * 3600)
    );
    assert_eq!(
        settings.ledger.dedup_retention,
        Duration::from_secs(400 * 24 * 3600)
    );
    assert_eq!(settings.audit.retention, Duration::ZERO);
    assert_eq!(settings.reconcile.interval, Duration::from_secs(24 * 3600));
    assert!(settings.pal.verify_writes);
    let error = Settings::from_toml_str(
        "[ledger]\nretention = \"30d\"\ndedup_retention = \"1d\"\n",
        [],
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("ledger.dedup_retention"), "{error}");
}

#[test]
fn named_admin_tokens_come_from_files_or_the_environment_and_the_single_one_is_admin() {
    let dir = tempfile::tempdir().unwrap();
    let alice = dir.path().join("alice");
    std::fs::write(&alice, "alice-token\n").unwrap();
    let toml = format!(
        "[http]\nadmin_token_env = \"ADMIN\"\n[http.admin_tokens.alice]\nfile = \"{}\"\n[http.admin_tokens.ci]\nenv = \"CI_TOKEN\"\n",
        alice.display()
    );
    let settings = Settings::from_toml_str(
        &toml,
        [
            ("ADMIN".to_owned(), "admin-token".to_owned()),
            ("CI_TOKEN".to_owned(), "ci-token".to_owned()),
        ],
    )
    .unwrap();
    let tokens: Vec<(&str, &str)> = settings
        .http
        .admin_tokens
        .iter()
        .map(|(name, token)| (name.as_str(), token.expose_secret()))
        .collect();
    assert_eq!(
        tokens,
        [
            ("admin", "admin-token"),
            ("alice", "alice-token"),
            ("ci", "ci-token")
        ]
    );
    let error = Settings::from_toml_str("[http.admin_tokens.x]\n", [])
        .unwrap_err()
        .to_string();
    assert!(error.contains("http.admin_tokens.x"), "{error}");
}

#[test]
fn partitions_default_to_one_and_read_from_the_environment() {
    let settings = Settings::from_toml_str("", env(&[])).unwrap();
    assert_eq!(settings.partitions.count.get(), 1);
    assert_eq!(settings.partitions.index.get(), 0);
    assert!(!settings.partitions.is_partitioned());
    assert!(settings.partitions.admin_urls.is_empty());

    let settings = Settings::from_toml_str(
        "[partitions]\ncount = 3\nadmin_urls = [\"http://p0:9090\", \"http://p1:9090/\", \"https://p2.example:9443/pal\"]\nrouter_user = \"palworker-router\"\n[security.publishers]\nhr-system = [\"hr.\"]",
        env(&[("PALWORKER__PARTITIONS__INDEX", "2")]),
    )
    .unwrap();
    let partitions = &settings.partitions;
    assert!(partitions.is_partitioned());
    assert_eq!(partitions.count.get(), 3);
    assert_eq!(partitions.index.routing_key(), "p2");
    assert_eq!(partitions.router_user.as_deref(), Some("palworker-router"));
    assert_eq!(
        partitions.admin_url(partitions.index).map(|u| u.as_str()),
        Some("https://p2.example:9443/pal")
    );
}
