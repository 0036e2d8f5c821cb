//! Callers that need the same kind of store call share one: the embedded
//! room's arrivals waiting for a sequence-number reservation, and a shared
//! room's arrivals waiting for numbers from Redis.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Callers that arrive together share one call: whoever finds no call in
/// flight starts one (in a task of its own, so no caller's cancellation
/// cuts it short) for everyone waiting, and the callers that come while it
/// runs are served by the next. A call per caller instead queued thousands
/// of calls on the one Redis connection during a burst of arrivals; those
/// at the back passed the response timeout, and the replica took Redis for
/// down and held the line.
pub struct Batch<T, E> {
    waiting: Mutex<Vec<oneshot::Sender<Result<T, E>>>>,
    calling: AtomicBool,
}

impl<T: Send + 'static, E: Clone + Send + 'static> Batch<T, E> {
    pub fn new() -> Batch<T, E> {
        Batch {
            waiting: Mutex::new(Vec::new()),
            calling: AtomicBool::new(false),
        }
    }

    /// This caller's share of the next call. `call(n)` makes the call for
    /// `n` callers and answers each of them, in order, or fails for all.
    ///
    /// `gone` is the answer when the call ended without answering this
    /// caller (it panicked).
    pub async fn join<F, Fut>(self: &Arc<Self>, call: F, gone: E) -> Result<T, E>
    where
        F: Fn(usize) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<T>, E>> + Send,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        if !self.calling.swap(true, Ordering::AcqRel) {
            let batch = self.clone();
            tokio::spawn(async move { batch.serve(call).await });
        }
        rx.await.unwrap_or(Err(gone))
    }

    /// A call is in flight (or about to start).
    pub fn busy(&self) -> bool {
        self.calling.load(Ordering::Acquire)
    }

    async fn serve<F, Fut>(&self, call: F)
    where
        F: Fn(usize) -> Fut,
        Fut: Future<Output = Result<Vec<T>, E>>,
    {
        loop {
            let group =
                std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|p| p.into_inner()));
            if group.is_empty() {
                self.calling.store(false, Ordering::Release);
                // A caller that came after the take saw the flag up and
                // left its call to this task: serve it, unless a new task
                // took over in between.
                let more = !self
                    .waiting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_empty();
                if more && !self.calling.swap(true, Ordering::AcqRel) {
                    continue;
                }
                return;
            }
            match call(group.len()).await {
                Ok(answers) => {
                    for (tx, answer) in group.into_iter().zip(answers) {
                        let _ = tx.send(Ok(answer));
                    }
                }
                Err(e) => {
                    for tx in group {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}

impl<T: Send + 'static, E: Clone + Send + 'static> Default for Batch<T, E> {
    fn default() -> Self {
        Batch::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call that counts its callers, and waits for `gate` before it
    /// answers (one permit per call): the test decides when calls end.
    fn counting_call(
        calls: Arc<Mutex<Vec<usize>>>,
        gate: Arc<tokio::sync::Semaphore>,
    ) -> impl Fn(usize) -> BoxFuture<Result<Vec<usize>, String>> + Send + 'static {
        move |n| {
            let (calls, gate) = (calls.clone(), gate.clone());
            Box::pin(async move {
                let first = {
                    let mut c = calls.lock().unwrap();
                    c.push(n);
                    c.iter().sum::<usize>() - n
                };
                gate.acquire().await.unwrap().forget();
                Ok((first..first + n).collect())
            })
        }
    }

    type BoxFuture<T> = std::pin::Pin<Box<dyn Future<Output = T> + Send>>;

    #[tokio::test]
    async fn callers_that_come_during_a_call_share_the_next_one() {
        let batch = Arc::new(Batch::<usize, String>::new());
        let calls = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let first = tokio::spawn({
            let (batch, call) = (batch.clone(), counting_call(calls.clone(), gate.clone()));
            async move { batch.join(call, "gone".into()).await }
        });
        while calls.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        // 99 more callers while the first call is in flight.
        let rest: Vec<_> = (0..99)
            .map(|_| {
                let (batch, call) = (batch.clone(), counting_call(calls.clone(), gate.clone()));
                tokio::spawn(async move { batch.join(call, "gone".into()).await })
            })
            .collect();
        while batch.waiting.lock().unwrap().len() < 99 {
            tokio::task::yield_now().await;
        }
        gate.add_permits(2);
        let mut answers = vec![first.await.unwrap().unwrap()];
        for r in rest {
            answers.push(r.await.unwrap().unwrap());
        }
        assert_eq!(
            *calls.lock().unwrap(),
            vec![1, 99],
            "two calls for 100 callers"
        );
        answers.sort_unstable();
        assert_eq!(
            answers,
            (0..100).collect::<Vec<_>>(),
            "each caller its own answer"
        );
        assert!(
            !batch.calling.load(Ordering::Acquire),
            "no call left in flight"
        );
    }

    #[tokio::test]
    async fn a_failed_call_fails_every_caller_it_was_for_and_the_next_call_is_made() {
        let batch = Arc::new(Batch::<u64, String>::new());
        let fail = |_n: usize| async { Err::<Vec<u64>, _>("redis: timed out".to_string()) };
        let joined: Vec<_> = (0..10)
            .map(|_| {
                let batch = batch.clone();
                tokio::spawn(async move { batch.join(fail, "gone".into()).await })
            })
            .collect();
        for j in joined {
            assert!(matches!(j.await.unwrap(), Err(e) if e.contains("timed out")));
        }
        let ok = batch
            .join(|n| async move { Ok(vec![7; n]) }, "gone".into())
            .await;
        assert_eq!(ok.unwrap(), 7);
    }
}
