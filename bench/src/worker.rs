//! A `palworker run` child process as the benchmarks see it: when it is
//! ready, what its `/metrics` say, how much memory it holds.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use palworker::local::process::WorkerProcess;

use crate::machine::proc_status_kib;

/// A worker process listening on `127.0.0.1:{port}`.
pub struct BenchWorker {
    process: WorkerProcess,
    base: String,
    http: reqwest::Client,
    spawned: Instant,
}

/// The numbers the benchmarks read from a worker's `/metrics`.
#[derive(Debug, Default)]
pub struct Scrape {
    pub accepted: u64,
    pub held: u64,
    pub dead_lettered: u64,
    pub pending: i64,
    pub done: u64,
    pub failed: u64,
    pub terminal: u64,
}

impl BenchWorker {
    /// Starts `binary --config config run` (its `http.listen` must be `port`).
    pub fn spawn(
        binary: &Path,
        config: &Path,
        env: &[(String, String)],
        log: &Path,
        port: u16,
    ) -> anyhow::Result<BenchWorker> {
        let spawned = Instant::now();
        let process = WorkerProcess::spawn(binary, config, env, log)
            .with_context(|| format!("starting `{}`", binary.display()))?;
        Ok(BenchWorker {
            process,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            spawned,
        })
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// `GET path`: the status and body.
    async fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let response = self.http.get(format!("{}{path}", self.base)).send().await?;
        let status = response.status().as_u16();
        Ok((status, response.text().await?))
    }

    /// Time from spawning until `/readyz` answers 200.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok((200, _)) = self.get("/readyz").await {
                return Ok(self.spawned.elapsed());
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "the worker was not ready within {timeout:?}\n{}",
                    self.process.log_tail(10)
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
    pub fn status_kib(&self, field: &str) -> anyhow::Result<u64> {
        proc_status_kib(self.pid(), field)
    }

    pub async fn scrape(&self) -> anyhow::Result<Scrape> {
        let (status, body) = self.get("/metrics").await?;
        anyhow::ensure!(status == 200, "/metrics answered {status}");
        let mut scrape = Scrape::default();
        for line in body.lines() {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let value: f64 = value.parse().unwrap_or(0.0);
            if series.starts_with("palworker_events_total{") {
                if series.contains("outcome=\"accepted\"") {
                    scrape.accepted += value as u64;
                } else if series.contains("outcome=\"held\"") {
                    scrape.held += value as u64;
                } else if series.contains("outcome=\"dead_lettered\"") {
                    scrape.dead_lettered += value as u64;
                }
            } else if series == "palworker_actions_pending" {
                scrape.pending = value as i64;
            } else if series.starts_with("palworker_actions_total{") {
                scrape.terminal += value as u64;
                if series.contains("outcome=\"done\"") {
                    scrape.done += value as u64;
                } else if series.contains("outcome=\"failed\"") {
                    scrape.failed += value as u64;
                }
            }
        }
        Ok(scrape)
    }

    /// SIGTERM, then a bounded wait for the drain, which must exit 0.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let status = self.process.terminate(Duration::from_secs(60)).await?;
        anyhow::ensure!(
            status.success(),
            "the worker exited with {status}\n{}",
            self.process.log_tail(10)
        );
        Ok(())
    }
}
