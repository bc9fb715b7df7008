//! Injected latency that lasts what it says. Tokio's timer has a 1 ms
//! granularity and rounds every deadline up, so `sleep(20 ms)` answers after
//! 20.5–21.5 ms on average; a simulated service that is 5 % slower than its
//! nominal latency would charge its own error to the client under test. One
//! thread per simulator waits for the earliest deadline with the OS's
//! sub-millisecond timed wait and releases each request at its deadline.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Instant;

use tokio::sync::oneshot;

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
    // By deadline, then arrival order (so equal deadlines leave in order).
    let mut waiting: BTreeMap<(Instant, u64), oneshot::Sender<()>> = BTreeMap::new();
    let mut seq = 0u64;
    loop {
        let now = Instant::now();
        while let Some(entry) = waiting.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let _ = entry.remove().send(());
        }
        let next = waiting.first_key_value().map(|((at, _), _)| *at);
        let received = match next {
            Some(at) => queue.recv_timeout(at - now),
            None => queue.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match received {
            Ok((at, release)) => {
                seq += 1;
                waiting.insert((at, seq), release);
            }
            Err(RecvTimeoutError::Timeout) => {}
            // The simulator is gone; release whoever still waits.
            Err(RecvTimeoutError::Disconnected) => match next {
                None => return,
                Some(at) => std::thread::sleep(at.saturating_duration_since(Instant::now())),
            },
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
