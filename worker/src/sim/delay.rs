//! Injected latency that lasts what it says. Tokio's timer has a 1 ms
//! granularity and rounds every deadline up, so `sleep(20 ms)` answers after
//! 20.5–21.5 ms on average; a simulated service that is 5 % slower than its
//! nominal latency would charge its own error to the client under test. One
//! thread per simulator waits for the earliest deadline with the OS's
//! sub-millisecond timed wait and releases each request at its deadline.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::OnceLock;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Instant;

use tokio::sync::oneshot;

/// A request waiting for its deadline.
struct Waiting {
    at: Instant,
    /// Arrival order, so that equal deadlines leave in order.
    seq: u64,
    release: oneshot::Sender<()>,
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Waiting {}

impl PartialOrd for Waiting {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Waiting {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// A deadline and the request to release then.
type Delay = (Instant, oneshot::Sender<()>);

/// The simulator's delay line; its thread starts with the first delay and
/// ends when the simulator is dropped.
#[derive(Default)]
pub(super) struct DelayLine {
    sender: OnceLock<Option<mpsc::Sender<Delay>>>,
}

impl DelayLine {
    /// Resolves at `at` (within the OS timer's slack, tens of microseconds).
    pub(super) async fn until(&self, at: Instant) {
        let (release, released) = oneshot::channel();
        let queued = self
            .sender
            .get_or_init(spawn)
            .as_ref()
            .is_some_and(|sender| sender.send((at, release)).is_ok());
        if !queued || released.await.is_err() {
            // No delay thread (it could not be started): tokio's timer.
            tokio::time::sleep_until(at.into()).await;
        }
    }
}

fn spawn() -> Option<mpsc::Sender<Delay>> {
    let (sender, queue) = mpsc::channel::<Delay>();
    let spawned = std::thread::Builder::new()
        .name("pal-sim-delay".into())
        .spawn(move || run(queue));
    match spawned {
        Ok(_) => Some(sender),
        Err(error) => {
            tracing::warn!(%error, "Simulator: no delay thread; latency uses tokio's timer.");
            None
        }
    }
}

fn run(queue: mpsc::Receiver<Delay>) {
    let mut waiting: BinaryHeap<Reverse<Waiting>> = BinaryHeap::new();
    let mut seq = 0u64;
    loop {
        let now = Instant::now();
        while waiting.peek().is_some_and(|next| next.0.at <= now) {
            let Reverse(due) = waiting.pop().expect("peeked");
            let _ = due.release.send(());
        }
        let received = match waiting.peek() {
            Some(next) => queue.recv_timeout(next.0.at - now),
            None => queue.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match received {
            Ok((at, release)) => {
                seq += 1;
                waiting.push(Reverse(Waiting { at, seq, release }));
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                // The simulator is gone; release whoever still waits.
                if waiting.is_empty() {
                    return;
                }
                let next = waiting.peek().expect("not empty").0.at;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn releases_requests_in_deadline_order_and_never_early() {
        let line = std::sync::Arc::new(DelayLine::default());
        let start = Instant::now();
        let (order, mut released) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for (index, ms) in [(0u8, 6u64), (1, 2), (2, 4)] {
            let line = line.clone();
            let order = order.clone();
            let at = start + Duration::from_millis(ms);
            tasks.push(tokio::spawn(async move {
                line.until(at).await;
                assert!(Instant::now() >= at, "released before its deadline");
                order.send(index).unwrap();
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        drop(order);
        let mut seen = Vec::new();
        while let Some(index) = released.recv().await {
            seen.push(index);
        }
        assert_eq!(seen, vec![1, 2, 0]);
    }
}
