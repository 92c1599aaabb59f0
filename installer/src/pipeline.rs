//! An ordered parallel map with bounded memory, shared by packing (compress chunks) and
//! unpacking (check and decompress chunks).
//!
//! One producer thread yields items, `workers` threads transform them, and the calling thread
//! consumes the results in the order the items were produced. At most [`in_flight`] items
//! exist at once, whatever the speed of each stage, so memory is bounded by the item size.

use std::collections::BTreeMap;
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::thread;

/// How many items may be produced but not yet consumed, for `workers` workers.
pub fn in_flight(workers: usize) -> usize {
    2 * workers + 1
}

/// The most workers used unless asked for more: with [`in_flight`] items of at most a few MiB
/// each, this keeps peak memory under 64 MiB on any host.
pub const MAX_DEFAULT_WORKERS: usize = 4;

/// One worker per core, at most [`MAX_DEFAULT_WORKERS`].
pub fn default_workers() -> usize {
    thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(MAX_DEFAULT_WORKERS)
}

/// Runs `work` on every item `produce` yields (until it yields `None`) on `workers` threads,
/// and hands the results to `consume` in production order. The first error of any stage stops
/// the others and is returned; a producer's error wins over the consequences it causes.
pub fn ordered<T, U, E>(
    workers: usize,
    mut produce: impl FnMut() -> Result<Option<T>, E> + Send,
    work: impl Fn(T) -> Result<U, E> + Sync,
    mut consume: impl FnMut(U) -> Result<(), E>,
) -> Result<(), E>
where
    T: Send,
    U: Send,
    E: Send,
{
    let workers = workers.max(1);
    let slots = in_flight(workers);
    let (token_tx, token_rx) = sync_channel::<()>(slots);
    for _ in 0..slots {
        // The channel has room for exactly `slots` tokens, so this never blocks or fails.
        let _ = token_tx.send(());
    }
    let (job_tx, job_rx) = sync_channel::<(usize, T)>(workers);
    let job_rx = Arc::new(Mutex::new(job_rx));
    let (done_tx, done_rx) = sync_channel::<(usize, Result<U, E>)>(slots);
    let work = &work;

    thread::scope(|scope| {
        let producer = scope.spawn(move || -> Result<(), E> {
            let mut index = 0;
            while token_rx.recv().is_ok() {
                let Some(item) = produce()? else { break };
                if job_tx.send((index, item)).is_err() {
                    break;
                }
                index += 1;
            }
            Ok(())
        });
        for _ in 0..workers {
            let job_rx = Arc::clone(&job_rx);
            let done_tx = done_tx.clone();
            scope.spawn(move || {
                loop {
                    let job = match job_rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok((index, item)) = job else { return };
                    if done_tx.send((index, work(item))).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        drop(job_rx);

        let consumed = (|| {
            let mut pending = BTreeMap::new();
            let mut next = 0;
            while let Ok((index, result)) = done_rx.recv() {
                pending.insert(index, result?);
                while let Some(value) = pending.remove(&next) {
                    consume(value)?;
                    next += 1;
                    let _ = token_tx.send(());
                }
            }
            Ok(())
        })();
        // Closing the channels stops the producer and workers if the consumer stopped early.
        drop(done_rx);
        drop(token_tx);
        let produced = producer.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        produced.and(consumed)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn keeps_order_and_bounds_memory() {
        let live = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let mut n = 0u64;
        let mut out = Vec::new();
        let result: Result<(), String> = ordered(
            3,
            || {
                n += 1;
                let now = live.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                Ok((n <= 200).then_some(n))
            },
            |x| {
                // Uneven work so that results arrive out of order.
                std::thread::sleep(std::time::Duration::from_micros((x % 7) * 100));
                Ok(x * 2)
            },
            |y| {
                live.fetch_sub(1, Ordering::SeqCst);
                out.push(y);
                Ok(())
            },
        );
        assert_eq!(result, Ok(()));
        assert_eq!(out, (1..=200).map(|x| x * 2).collect::<Vec<_>>());
        assert!(peak.load(Ordering::SeqCst) <= in_flight(3) + 1, "peak {}", peak.load(Ordering::SeqCst));
    }

    #[test]
    fn first_error_stops_everything() {
        let mut n = 0;
        let result: Result<(), String> = ordered(
            2,
            || {
                n += 1;
                Ok(Some(n))
            },
            |x| if x == 50 { Err(format!("item {x} failed")) } else { Ok(x) },
            |_| Ok(()),
        );
        assert_eq!(result, Err("item 50 failed".to_string()));

        let mut n = 0;
        let result: Result<(), String> = ordered(
            2,
            || {
                n += 1;
                if n == 10 { Err("producer failed".to_string()) } else { Ok(Some(n)) }
            },
            Ok,
            |_| Ok(()),
        );
        assert_eq!(result, Err("producer failed".to_string()));

        let mut seen = 0;
        let result: Result<(), String> = ordered(
            2,
            || Ok(Some(1)),
            Ok,
            |_| {
                seen += 1;
                if seen == 5 { Err("consumer failed".into()) } else { Ok(()) }
            },
        );
        assert_eq!(result, Err("consumer failed".to_string()));
    }
}
