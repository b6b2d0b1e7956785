//! TokenReview answers, remembered by token digest: a token is reviewed at
//! most once per interval however many requests carry it, callers asking at
//! the same time share one review, and an API server that cannot answer is
//! not asked again for every request while it is down.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use tokenmesh_tokens::secret::SecretHash;
use tokio::sync::OnceCell;

/// Whether the API server accepts the token; `Err` when it could not say.
pub type Answer = Result<bool, String>;

/// How long a failed review is remembered.
const FAILURE_TTL: Duration = Duration::from_secs(1);
/// Answers remembered at most; beyond, the older half goes.
const MAX_ENTRIES: usize = 10_000;

#[derive(Clone)]
struct Entry {
    answer: Arc<OnceCell<Answer>>,
    since: Instant,
}

pub struct Reviews {
    entries: Mutex<HashMap<SecretHash, Entry>>,
    ttl: Duration,
}

impl Reviews {
    pub fn new(ttl: Duration) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    /// The remembered answer for `token`, else what `ask` answers (asked once
    /// for all callers waiting on the same token).
    pub async fn answer<F, Fut>(&self, token: &str, ask: F) -> Answer
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Answer>,
    {
        let digest = SecretHash::of(token.as_bytes());
        let entry = {
            let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
            match entries.get(&digest).filter(|e| self.fresh(e)) {
                Some(entry) => entry.clone(),
                None => {
                    if entries.len() >= MAX_ENTRIES {
                        self.evict(&mut entries);
                    }
                    let entry = Entry {
                        answer: Arc::new(OnceCell::new()),
                        since: Instant::now(),
                    };
                    entries.insert(digest, entry.clone());
                    entry
                }
            }
        };
        entry.answer.get_or_init(ask).await.clone()
    }

    fn fresh(&self, entry: &Entry) -> bool {
        match entry.answer.get() {
            None => true, // being asked
            Some(Ok(_)) => entry.since.elapsed() < self.ttl,
            Some(Err(_)) => entry.since.elapsed() < FAILURE_TTL,
        }
    }

    fn evict(&self, entries: &mut HashMap<SecretHash, Entry>) {
        entries.retain(|_, e| self.fresh(e));
        if entries.len() >= MAX_ENTRIES {
            let mut ages: Vec<Instant> = entries.values().map(|e| e.since).collect();
            ages.sort_unstable();
            let cutoff = ages[ages.len() / 2];
            entries.retain(|_, e| e.since > cutoff);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn one_review_for_callers_at_once_and_answers_expire() {
        let reviews = Arc::new(Reviews::new(Duration::from_millis(200)));
        let asked = Arc::new(AtomicUsize::new(0));
        let mut callers = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let (reviews, asked) = (reviews.clone(), asked.clone());
            callers.spawn(async move {
                reviews
                    .answer("t", || async move {
                        asked.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok(true)
                    })
                    .await
            });
        }
        while let Some(answer) = callers.join_next().await {
            assert_eq!(answer.unwrap(), Ok(true));
        }
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        assert_eq!(reviews.answer("t", || async { Ok(false) }).await, Ok(true));
        assert_eq!(
            reviews.answer("other", || async { Ok(false) }).await,
            Ok(false)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(reviews.answer("t", || async { Ok(false) }).await, Ok(false));
    }

    #[tokio::test]
    async fn failures_are_remembered_briefly() {
        let reviews = Reviews::new(Duration::from_secs(60));
        let failed = reviews.answer("t", || async { Err("down".into()) }).await;
        assert_eq!(failed, Err("down".into()));
        let again = reviews.answer("t", || async { Ok(true) }).await;
        assert_eq!(again, Err("down".into()), "not asked again at once");
        tokio::time::sleep(FAILURE_TTL + Duration::from_millis(50)).await;
        assert_eq!(reviews.answer("t", || async { Ok(true) }).await, Ok(true));
    }

    #[tokio::test]
    async fn a_full_memory_keeps_the_newer_half() {
        let reviews = Reviews::new(Duration::from_secs(60));
        for n in 0..MAX_ENTRIES {
            let answer = reviews.answer(&n.to_string(), || async { Ok(true) }).await;
            assert_eq!(answer, Ok(true));
        }
        let answer = reviews.answer("one more", || async { Ok(true) }).await;
        assert_eq!(answer, Ok(true));
        let entries = reviews.entries.lock().unwrap();
        assert!(entries.len() <= MAX_ENTRIES / 2 + 1, "{}", entries.len());
        assert!(entries.contains_key(&SecretHash::of(b"one more")));
        assert!(
            !entries.contains_key(&SecretHash::of(b"0")),
            "the oldest went"
        );
    }
}
