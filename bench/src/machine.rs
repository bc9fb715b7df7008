//! The machine: CPU time and memory of processes from `/proc`, the
//! broker's process, the load, temporary files and ports.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

/// Linux's USER_HZ: the unit of utime/stime in /proc/PID/stat.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// Polls `condition` every `interval` until it holds; returns when it did.
pub async fn wait(
    timeout: Duration,
    interval: Duration,
    what: &str,
    mut condition: impl FnMut() -> bool,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return Ok(Instant::now());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(interval).await;
    }
}

pub fn proc_status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| {
            line.strip_prefix(field)?
                .strip_prefix(':')?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        })
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// User + system CPU seconds of a process (NaN when unknown).
pub fn cpu_seconds(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else {
        return f64::NAN;
    };
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the command name (which may contain spaces): state is field 3,
    // utime field 14, stime field 15.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return f64::NAN;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (ticks(11) + ticks(12)) / CLOCK_TICKS_PER_SECOND
}

/// The local RabbitMQ's Erlang VM, to report the broker's CPU time.
pub fn broker_pid() -> Option<u32> {
    let entries = std::fs::read_dir("/proc").ok()?;
    entries.take(100_000).flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let command = std::fs::read_to_string(entry.path().join("comm")).ok()?;
        command.trim().starts_with("beam").then_some(pid)
    })
}

/// The 1-minute load average after a run: other work on the machine skews
/// the numbers, and this shows it.
pub fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "load {}",
        text.split_whitespace().next().unwrap_or("unknown")
    )
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "(unparsable URL)".to_owned(),
    }
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Copies a (closed) sled directory.
pub fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
