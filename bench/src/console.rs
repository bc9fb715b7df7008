//! Console: how long each page of the operator's console takes on a ledger
//! of `--accounts` actions (issue 18: every page under 200 ms). The ledger
//! holds one `partner.id.changed` over every account, its actions ended —
//! most `done`, one in 1,000 `failed`, one in 500 `manual` (accounts without
//! a credential) — and a held plan over one tenant's accounts; its audit
//! trail holds every outcome, all within the last 24 hours. An in-process
//! worker serves it (writes to PAL paused); each page is asked for over
//! HTTP with a bearer token, once to warm up, then `PAGE_REPEATS` times:
//! the line has each page's median in milliseconds.
//! `first_overview_ms` is the first overview after the worker started,
//! which waits for the console's tally to count every action once.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use chrono::Utc;
use palworker::clock::SystemClock;
use palworker::ledger::Ledger;
use palworker::local::{ADMIN_TOKEN, Harness, HarnessOptions, TempDir, events};
use palworker_core::ActionState;
use palworker_events::PartnerId;

use crate::accounts::{account, parse_event, tenant};
use crate::ledgers::end_every_due_action;
use crate::machine::copy_dir;
use crate::report::{Sample, Unit, line, log_run, medians};
use crate::{BenchArgs, LEDGER_CACHE_BYTES, PARTNER_A, PARTNER_B, PARTNER_C};

/// The accounts of this scenario (see `accounts`: sets never share an identity).
const SET_CONSOLE: u8 = 0x0c;
/// Timed requests per page (after one to warm up).
const PAGE_REPEATS: usize = 5;
/// Issue 18's bound on a page.
const TARGET_MS: f64 = 200.0;

/// What the built ledger holds, for the pages' addresses.
struct Built {
    /// The big event's sequence number.
    event_seq: u64,
    actions: u64,
    /// An employee with accounts.
    employee: String,
}

pub async fn run(url: &str, args: &BenchArgs) -> anyhow::Result<Vec<String>> {
    let work = TempDir::new("palworker-bench-console")?;
    let base = work.path().join("base-ledger");
    let started = Instant::now();
    let built = {
        let base = base.clone();
        let (accounts, tenants) = (args.accounts, args.tenants);
        tokio::task::spawn_blocking(move || build_ledger(&base, accounts, tenants)).await??
    };
    eprintln!(
        "console: built a ledger with {} actions in {:.1} s",
        built.actions,
        started.elapsed().as_secs_f64()
    );
    let mut runs = Vec::new();
    for run in 1..=args.runs {
        let ledger = work.path().join(format!("run-{run}"));
        copy_dir(&base, &ledger)?;
        let sample = console_run(url, &ledger, &built).await?;
        log_run("console", run, args.runs, &sample);
        runs.push(sample);
        std::fs::remove_dir_all(&ledger).ok();
    }
    let median = medians(&runs);
    let slowest = PAGES
        .iter()
        .map(|(name, _)| median.get(name))
        .fold(0.0, f64::max);
    Ok(vec![line(
        "console",
        &[
            ("actions", built.actions.to_string()),
            ("runs", args.runs.to_string()),
        ],
        &median,
        "every_page_ms<200",
        slowest < TARGET_MS,
    )])
}

/// The pages measured: the sample key and the path (`{seq}`: the big
/// event, `{employee}`: an employee with accounts).
const PAGES: [(&str, &str); 11] = [
    ("overview_ms", "/"),
    ("events_ms", "/events"),
    ("events_employee_ms", "/events?employee={employee}"),
    (
        "events_type_ms",
        "/events?type=partner.id.changed&state=completed",
    ),
    ("event_ms", "/events/{seq}"),
    ("event_deep_ms", "/events/{seq}?from=60000"),
    ("held_ms", "/held"),
    ("failed_ms", "/failed"),
    ("manual_ms", "/manual"),
    ("audit_ms", "/audit"),
    ("audit_deep_ms", "/audit?before=50000"),
];

/// A ledger of `actions` accounts changed by one event: its actions ended
/// `done`, `failed` (one in 1,000) or `manual` (one in 500: no
/// credential), claimed and finished a batch per transaction; then a held
/// plan over tenant 0's accounts.
fn build_ledger(path: &Path, actions: u64, tenants: u64) -> anyhow::Result<Built> {
    let ledger = Ledger::open(path, LEDGER_CACHE_BYTES)?;
    let now = Utc::now();
    let rows = (0..actions)
        .map(|i| {
            let (t, index) = (i % tenants, i / tenants);
            let credential = (i % 500 != 0).then_some("bench-console");
            Ok((
                account(SET_CONSOLE, t, index, credential)?,
                Some(PartnerId::parse(PARTNER_A)?),
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let employee = rows
        .first()
        .map(|(account, _)| account.employee_id.to_string())
        .context("no account")?;
    ledger.import_accounts(rows, now)?;
    let event = parse_event(&events::partner_id_changed(
        "bench-console",
        PARTNER_A,
        PARTNER_B,
        None,
    ))?;
    ledger.accept(&event, None, now, usize::MAX)?;
    let before = PartnerId::parse(PARTNER_A)?;
    let after = PartnerId::parse(PARTNER_B)?;
    end_every_due_action(&ledger, |action, now| {
        if action.credential.is_none() {
            // As the executor ends an account without a credential.
            action.state = ActionState::Manual;
            action.detail =
                Some("no credential: the identity itself must change its link (bench)".to_owned());
        } else if action.action_id.get() % 1_000 == 1 {
            action.state = ActionState::Failed;
            action.attempts = 3;
            action.last_error = Some("permanent: PAL answered 403 Forbidden (bench)".to_owned());
        } else {
            action.state = ActionState::Done;
            action.attempts = 1;
            action.before_partner_id = Some(before.clone());
            action.after_partner_id = Some(after.clone());
            action.detail = Some(format!("PATCH {PARTNER_B}"));
            action.verified_at = Some(now);
        }
    })?;
    let tenant_0 = tenant(0);
    let held = parse_event(&events::partner_id_changed(
        "bench-console-held",
        PARTNER_B,
        PARTNER_C,
        Some(&[tenant_0.as_str()]),
    ))?;
    ledger.accept(&held, None, Utc::now(), 1)?;
    ledger.flush()?;
    let counts = ledger.action_state_counts()?;
    let total: u64 = counts.values().sum();
    anyhow::ensure!(
        counts.get("failed").copied().unwrap_or(0) > 0
            && counts.get("manual").copied().unwrap_or(0) > 0
            && counts.get("held").copied().unwrap_or(0) > 0,
        "the console ledger holds {counts:?}"
    );
    let event_seq = ledger.resolve_event("bench-console", None)?.seq.get();
    Ok(Built {
        event_seq,
        actions: total,
        employee,
    })
}

async fn console_run(url: &str, ledger: &Path, built: &Built) -> anyhow::Result<Sample> {
    let mut harness = Harness::prepare(
        HarnessOptions {
            amqp_url: url.to_owned(),
            name: "palworker-bench-console".to_owned(),
            ledger_path: Some(ledger.to_owned()),
            extra_toml: format!(
                "[worker]\npaused = true\n[ledger]\ncache_capacity = {LEDGER_CACHE_BYTES}\n"
            ),
            ..HarnessOptions::default()
        },
        Arc::new(SystemClock),
    )
    .await?;
    let result = async {
        harness.start_worker().await?;
        measure(&harness, built).await
    }
    .await;
    let shutdown = harness.shutdown().await;
    let sample = result?;
    shutdown?;
    Ok(sample)
}

async fn measure(harness: &Harness, built: &Built) -> anyhow::Result<Sample> {
    let base = format!("http://{}", harness.app().http_addr);
    let http = reqwest::Client::new();
    let get = async |path: &str| -> anyhow::Result<f64> {
        let started = Instant::now();
        let response = http
            .get(format!("{base}{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await?;
        let status = response.status();
        let body = response.text().await?;
        let elapsed = started.elapsed().as_secs_f64() * 1_000.0;
        anyhow::ensure!(
            status.is_success() && body.contains("</html>"),
            "{path} answered {status}: {}",
            body.chars().take(300).collect::<String>()
        );
        Ok(elapsed)
    };
    let mut sample = Sample::default();
    sample.push("first_overview_ms", Unit::Millis, get("/").await?);
    for (name, template) in PAGES {
        let path = template
            .replace("{seq}", &built.event_seq.to_string())
            .replace("{employee}", &built.employee);
        get(&path).await?;
        let mut times = Vec::with_capacity(PAGE_REPEATS);
        for _ in 0..PAGE_REPEATS {
            times.push(get(&path).await?);
        }
        times.sort_by(f64::total_cmp);
        sample.push(name, Unit::Millis, times[times.len() / 2]);
    }
    Ok(sample)
}
