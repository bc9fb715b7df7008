//! `palworker demo`: the whole path on one machine. The simulator runs
//! in-process, the worker consumes from a uniquely named topology on the local
//! RabbitMQ, and real CloudEvents go through the broker.

use std::collections::BTreeMap;
use std::time::Duration;

use palworker_config::Settings;

use super::{Harness, HarnessOptions, ServicePrincipal, events};
use crate::operators::{Attached, LedgerOperations, Operator};
use palworker_core::StatusFilter;

const CONTOSO: &str = "1b1121dd-6900-412a-af73-e8d44f81e1c1";
const FABRIKAM: &str = "2c2232ee-7a01-423b-b084-f9e55a92f2d2";
const NORTHWIND: &str = "3d3343ff-8b12-434c-8195-0af66ba303e3";
const OLD_PARTNER: &str = "1234567";
const NEW_PARTNER: &str = "7654321";

fn tenant_name(tenant: &str) -> &'static str {
    match tenant {
        CONTOSO => "Contoso",
        FABRIKAM => "Fabrikam",
        NORTHWIND => "Northwind",
        _ => "?",
    }
}

/// (employee, credential, tenant, object id)
const ACCOUNTS: [(&str, Option<&str>, &str, &str); 9] = [
    (
        "E-100 alice",
        Some("sp-alice"),
        CONTOSO,
        "a1000000-0000-4000-8000-000000000001",
    ),
    (
        "E-100 alice",
        Some("sp-alice"),
        FABRIKAM,
        "a1000000-0000-4000-8000-000000000002",
    ),
    (
        "E-100 alice",
        Some("sp-alice"),
        NORTHWIND,
        "a1000000-0000-4000-8000-000000000003",
    ),
    (
        "E-200 bob",
        Some("sp-bob"),
        CONTOSO,
        "b2000000-0000-4000-8000-000000000001",
    ),
    (
        "E-200 bob",
        Some("sp-bob"),
        FABRIKAM,
        "b2000000-0000-4000-8000-000000000002",
    ),
    (
        "E-300 carol",
        Some("sp-carol"),
        FABRIKAM,
        "c3000000-0000-4000-8000-000000000002",
    ),
    (
        "E-300 carol",
        Some("sp-carol"),
        NORTHWIND,
        "c3000000-0000-4000-8000-000000000003",
    ),
    (
        "E-400 dave",
        None,
        CONTOSO,
        "d4000000-0000-4000-8000-000000000001",
    ),
    (
        "E-500 erin",
        Some("sp-erin"),
        NORTHWIND,
        "e5000000-0000-4000-8000-000000000003",
    ),
];

fn employee(label: &str) -> &str {
    label.split(' ').next().unwrap_or(label)
}

fn principals() -> Vec<ServicePrincipal> {
    let mut by_credential: BTreeMap<&str, Vec<(String, String)>> = BTreeMap::new();
    for (_, credential, tenant, object) in ACCOUNTS {
        if let Some(credential) = credential {
            by_credential
                .entry(credential)
                .or_default()
                .push((tenant.to_owned(), object.to_owned()));
        }
    }
    by_credential
        .into_iter()
        .enumerate()
        .map(|(n, (credential, identities))| ServicePrincipal {
            credential: credential.to_owned(),
            client_id: format!("0000000{}-0000-4000-8000-00000000000{}", n + 1, n + 1),
            identities,
        })
        .collect()
}

fn snapshot(harness: &Harness) -> BTreeMap<(String, String), String> {
    harness
        .simulator
        .links()
        .into_iter()
        .map(|link| {
            (
                (link.tenant_id.clone(), link.object_id.clone()),
                link.partner_id.clone(),
            )
        })
        .collect()
}

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let progress = crate::progress::bar("demo", 5);
    let mut harness = Harness::start(HarnessOptions {
        amqp_url: settings.amqp.url.expose().to_owned(),
        principals: principals(),
        extra_toml: "[retry]\ninitial_interval = \"200ms\"\n".to_owned(),
        name: "palworker-demo".to_owned(),
        ..HarnessOptions::default()
    })
    .await?;
    let result = scenario(&mut harness, &progress).await;
    progress.finish_and_clear();
    let shutdown = harness.shutdown().await;
    result.and(shutdown)
}

async fn scenario(harness: &mut Harness, progress: &indicatif::ProgressBar) -> anyhow::Result<()> {
    let settle = Duration::from_secs(60);
    println!(
        "palworker demo — simulator at {}, exchange `{}`\n",
        harness.sim_url(),
        harness.topology.exchange
    );

    // 1. Seed: Dave linked himself by hand (a user account: no credential);
    //    the others are assigned to projects through events; Bob's and Erin's
    //    accounts are imported (known, not yet linked).
    harness
        .simulator
        .seed_link(CONTOSO, ACCOUNTS[7].3, OLD_PARTNER);
    let mut import = String::new();
    for (label, credential, tenant, object) in ACCOUNTS
        .iter()
        .filter(|a| a.0.starts_with("E-200") || a.0.starts_with("E-500"))
    {
        import.push_str(&serde_json::json!({
            "tenant_id": tenant, "object_id": object, "employee_id": employee(label), "credential": credential,
        }).to_string());
        import.push('\n');
    }
    let imported = LedgerOperations::new(
        harness.app().ledger.clone(),
        Attached::Stopped,
        Operator::local_user(),
    )
    .import_text(&import)?;
    println!("seeded the inventory: imported {imported} account(s) of Bob and Erin");
    for (n, (label, credential, tenant, object)) in ACCOUNTS.iter().enumerate() {
        if label.starts_with("E-200") || label.starts_with("E-500") {
            continue;
        }
        let contract = (label.starts_with("E-300") && *tenant == FABRIKAM).then_some("C-FAB-7");
        harness
            .publish(&events::assignment_started(
                &format!("demo-start-{n}"),
                employee(label),
                tenant,
                object,
                OLD_PARTNER,
                *credential,
                contract,
            ))
            .await?;
    }
    harness.wait_until_settled(settle).await?;
    progress.inc(1);
    let before = snapshot(harness);
    println!(
        "published 7 project.assignment.started events; links in PAL now: {}\n",
        before.len()
    );

    // 2. Alice leaves; Bob takes over her customers.
    harness
        .publish(&events::employee_departed(
            "demo-departure",
            "E-100",
            Some("E-200"),
            None,
        ))
        .await?;
    harness.wait_until_settled(settle).await?;
    progress.inc(1);
    // 3. The Fabrikam contract C-FAB-7 ends.
    harness
        .publish(&events::contract_ended(
            "demo-contract-end",
            FABRIKAM,
            Some("C-FAB-7"),
        ))
        .await?;
    harness.wait_until_settled(settle).await?;
    progress.inc(1);
    // 4. The company's partner ID changes.
    harness
        .publish(&events::partner_id_changed(
            "demo-partner-change",
            OLD_PARTNER,
            NEW_PARTNER,
            None,
        ))
        .await?;
    harness.wait_until_settled(settle).await?;
    progress.inc(1);
    // 5. A malformed message goes to the dead-letter queue; the worker carries on.
    harness
        .publish_raw(
            "hr.employee.departed",
            b"{not json",
            "application/cloudevents+json",
        )
        .await?;
    harness.wait_until_settled(settle).await?;
    progress.inc(1);
    progress.finish_and_clear();

    let after = snapshot(harness);
    let ledger = harness.app().ledger.clone();
    let actions = ledger.actions(&StatusFilter::default())?;
    let dead = harness.dead_letters().await?;

    println!("What changed, per tenant (partner ID linked to each identity, before → after):");
    for tenant in [CONTOSO, FABRIKAM, NORTHWIND] {
        println!("\n  {} ({tenant})", tenant_name(tenant));
        for (label, credential, account_tenant, object) in ACCOUNTS.iter().filter(|a| a.2 == tenant)
        {
            let key = (account_tenant.to_string(), object.to_string());
            let was = before.get(&key).map(String::as_str).unwrap_or("none");
            let now = after.get(&key).map(String::as_str).unwrap_or("none");
            let outcomes: Vec<String> = actions
                .iter()
                .filter(|a| {
                    a.tenant_id.as_str() == *account_tenant && a.object_id.as_str() == *object
                })
                .filter(|a| !a.event_id.starts_with("demo-start"))
                .map(|a| {
                    format!(
                        "{} {}→{}",
                        a.event_type.as_str(),
                        a.op.as_str(),
                        a.state.as_str()
                    )
                })
                .collect();
            println!(
                "    {:<12} {:<9} {:>8} → {:<8} {}",
                label,
                if credential.is_some() { "sp" } else { "user" },
                was,
                now,
                if outcomes.is_empty() {
                    "-".to_owned()
                } else {
                    outcomes.join(", ")
                }
            );
        }
    }
    let departure = ledger.resolve_event("demo-departure", None)?;
    let unassigned: Vec<&str> = departure
        .unassigned
        .iter()
        .map(|t| tenant_name(t.as_str()))
        .collect();
    println!(
        "\nUnassigned after Alice's departure (Bob has no account there): {}",
        if unassigned.is_empty() {
            "none".to_owned()
        } else {
            unassigned.join(", ")
        }
    );
    let manual: Vec<String> = actions
        .iter()
        .filter(|a| a.state == palworker_core::ActionState::Manual)
        .map(|a| {
            format!(
                "{} in {} (action {})",
                a.employee_id,
                tenant_name(a.tenant_id.as_str()),
                a.action_id
            )
        })
        .collect();
    println!(
        "Manual (no credential; the user must change the link): {}",
        if manual.is_empty() {
            "none".to_owned()
        } else {
            manual.join("; ")
        }
    );
    println!(
        "Dead-lettered: {} message(s){}",
        dead.len(),
        dead.first()
            .and_then(|m| m.reason.as_deref())
            .map(|r| format!(" — {r}"))
            .unwrap_or_default()
    );
    let counts = ledger.action_state_counts()?;
    println!(
        "Actions: {}",
        counts
            .iter()
            .map(|(state, n)| format!("{state} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "PAL requests: {} (throttle violations: {})",
        harness.simulator.requests().len(),
        harness.simulator.throttle_violations().len()
    );
    Ok(())
}
