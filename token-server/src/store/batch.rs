//! Group commit: one task per kind of work takes what many requests queued
//! and does it in one database call (one transaction), then answers each
//! request with the outcome of the call that held its item. A writer is
//! answered only after the commit that holds its row, so a 200 still means
//! the row is in the database. Batches form by themselves: while one call
//! runs, the next requests queue, and the task takes them all (up to a cap)
//! when it is free; one lone request goes alone, without waiting for company.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

use super::{StoreError, StoreResult};

/// Requests waiting beyond this make their senders wait (backpressure).
const QUEUE: usize = 4096;

/// One kind of work done for many requests at once.
pub(super) trait Batch: Send + Sync + 'static {
    type Item: Send + Sync + 'static;
    type Output: Send + 'static;

    /// Does the work of `items` in one call: one output per item, in order.
    fn run(
        &self,
        items: &[Self::Item],
    ) -> impl Future<Output = StoreResult<Vec<Self::Output>>> + Send;
}

type Pending<B> = (
    <B as Batch>::Item,
    oneshot::Sender<StoreResult<<B as Batch>::Output>>,
);

/// The queue in front of a [`Batch`]'s task; the task ends when this is dropped.
pub(super) struct Batcher<B: Batch> {
    queue: mpsc::Sender<Pending<B>>,
}

impl<B: Batch> Batcher<B> {
    /// Starts the task; batches hold at most `max` items.
    pub(super) fn spawn(name: &'static str, batch: B, max: usize) -> Self {
        let (queue, requests) = mpsc::channel(QUEUE);
        tokenmesh_tokens::runtime::spawn(
            tracing::info_span!("store batch", name),
            run(batch, requests, max.max(1)),
        );
        Self { queue }
    }

    /// Queues `item` and waits for the outcome of the call that holds it.
    pub(super) async fn submit(&self, item: B::Item) -> StoreResult<B::Output> {
        let (reply, outcome) = oneshot::channel();
        self.queue
            .send((item, reply))
            .await
            .map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the store's batch task stopped".into())
}

async fn run<B: Batch>(batch: B, mut requests: mpsc::Receiver<Pending<B>>, max: usize) {
    let mut pending = Vec::with_capacity(max);
    while requests.recv_many(&mut pending, max).await > 0 {
        let (items, replies): (Vec<_>, Vec<_>) = pending.drain(..).unzip();
        match batch.run(&items).await {
            Ok(outputs) if outputs.len() == items.len() => {
                for (reply, output) in replies.into_iter().zip(outputs) {
                    // The request may have gone (client hung up); its row stays.
                    let _ = reply.send(Ok(output));
                }
            }
            Ok(outputs) => {
                let message = format!("{} answers for {} items", outputs.len(), items.len());
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Corrupt(message.clone())));
                }
            }
            Err(err) if items.len() == 1 => {
                if let Some(reply) = replies.into_iter().next() {
                    let _ = reply.send(Err(err));
                }
            }
            // One item at a time: an item the database refuses fails only
            // its own request (the failed call committed nothing).
            Err(_) => {
                for (item, reply) in items.iter().zip(replies) {
                    let outcome =
                        batch
                            .run(std::slice::from_ref(item))
                            .await
                            .and_then(|mut out| {
                                out.pop().ok_or_else(|| {
                                    StoreError::Corrupt("no answer for an item".into())
                                })
                            });
                    let _ = reply.send(outcome);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    };

    use super::*;

    /// Records each call's items and answers ten times each; refuses any
    /// call holding 13; the first call waits for `release`.
    #[derive(Clone, Default)]
    struct Recorder {
        calls: Arc<Mutex<Vec<Vec<u32>>>>,
        started: Arc<AtomicBool>,
        release: Arc<tokio::sync::Notify>,
    }

    impl Batch for Recorder {
        type Item = u32;
        type Output = u32;

        async fn run(&self, items: &[u32]) -> StoreResult<Vec<u32>> {
            self.calls.lock().unwrap().push(items.to_vec());
            if !self.started.swap(true, Ordering::SeqCst) {
                self.release.notified().await;
            }
            if items.contains(&13) {
                return Err(StoreError::Unavailable("refused".into()));
            }
            Ok(items.iter().map(|i| i * 10).collect())
        }
    }

    /// Submits 1, and `items` while the call for 1 runs; then lets it
    /// finish. Every call made, and the answers to `items`.
    async fn queued_behind_a_call(
        max: usize,
        items: &[u32],
    ) -> (Vec<Vec<u32>>, Vec<StoreResult<u32>>) {
        let recorder = Recorder::default();
        let batcher = Arc::new(Batcher::spawn("test", recorder.clone(), max));
        let submit = |item| {
            let batcher = batcher.clone();
            tokio::spawn(async move { batcher.submit(item).await })
        };
        let first = submit(1);
        while !recorder.started.load(Ordering::SeqCst) {
            tokio::task::yield_now().await;
        }
        let rest: Vec<_> = items.iter().map(|&i| submit(i)).collect();
        while batcher.queue.capacity() > QUEUE - items.len() {
            tokio::task::yield_now().await;
        }
        recorder.release.notify_one();
        assert_eq!(first.await.unwrap().unwrap(), 10);
        let mut answers = Vec::new();
        for handle in rest {
            answers.push(handle.await.unwrap());
        }
        let calls = recorder.calls.lock().unwrap().clone();
        (calls, answers)
    }

    /// Requests that queue while a call runs go together in the next one,
    /// and each gets its own answer.
    #[tokio::test]
    async fn requests_queued_during_a_call_share_the_next_one() {
        let (calls, answers) = queued_behind_a_call(64, &[2, 3, 4, 5, 6]).await;
        assert_eq!(calls, vec![vec![1], vec![2, 3, 4, 5, 6]]);
        let answers: Vec<u32> = answers.into_iter().map(Result::unwrap).collect();
        assert_eq!(answers, vec![20, 30, 40, 50, 60]);
    }

    /// A call the database refuses is made again item by item: only the
    /// refused item's request fails.
    #[tokio::test]
    async fn a_refused_item_fails_only_its_own_request() {
        let (calls, answers) = queued_behind_a_call(64, &[12, 13, 14]).await;
        assert_eq!(
            calls,
            vec![vec![1], vec![12, 13, 14], vec![12], vec![13], vec![14]]
        );
        assert_eq!(answers[0].as_ref().unwrap(), &120);
        assert!(answers[1].is_err());
        assert_eq!(answers[2].as_ref().unwrap(), &140);
    }

    #[tokio::test]
    async fn batches_hold_at_most_max_items() {
        let (calls, _) = queued_behind_a_call(2, &[2, 3, 4, 5, 6]).await;
        assert_eq!(calls, vec![vec![1], vec![2, 3], vec![4, 5], vec![6]]);
    }
}
