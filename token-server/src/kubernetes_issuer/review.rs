//! TokenReview answers, remembered by token digest in the one single-flight
//! cache: a token is reviewed at most once per interval however many
//! requests carry it, callers asking at the same time share one review, and
//! an API server that cannot answer is not asked again for every request
//! while it is down.

use std::{future::Future, time::Duration, time::Instant};

use tokenmesh_tokens::{cache::TtlCache, clock::SharedClock, secret::SecretHash};

/// Whether the API server accepts the token; `Err` when it could not say.
pub type Answer = Result<bool, String>;

/// How long a failed review is remembered.
const FAILURE_TTL: Duration = Duration::from_secs(1);
/// Answers remembered at most (the cache's eviction beyond).
const MAX_ENTRIES: usize = 10_000;

pub struct Reviews {
    answers: TtlCache<SecretHash, Answer, Instant>,
    ttl: Duration,
    clock: SharedClock,
}

impl Reviews {
    pub fn new(ttl: Duration, clock: SharedClock) -> Self {
        Self {
            answers: TtlCache::new(MAX_ENTRIES),
            ttl,
            clock,
        }
    }

    /// The remembered answer for `token`, else what `ask` answers (asked once
    /// for all callers waiting on the same token), remembered for the TTL
    /// from when it was asked.
    pub async fn answer<F, Fut>(&self, token: &str, ask: F) -> Answer
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Answer>,
    {
        let digest = SecretHash::of(token.as_bytes());
        let now = self.clock.instant();
        let fill = || async {
            let answer = ask().await;
            let ttl = if answer.is_ok() {
                self.ttl
            } else {
                FAILURE_TTL
            };
            Ok::<_, std::convert::Infallible>((answer, Some(now + ttl)))
        };
        match self.answers.get_or_fill(&digest, now, fill).await {
            Ok(answer) => answer,
            Err(never) => match never {},
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use tokenmesh_tokens::clock::{Clock, ManualClock};

    use super::*;

    #[tokio::test]
    async fn one_review_for_callers_at_once_and_answers_expire() {
        let clock = ManualClock::at_unix(1_000);
        let reviews = Arc::new(Reviews::new(Duration::from_secs(5), clock.clone()));
        let asked = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let mut callers = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let (reviews, asked, gate) = (reviews.clone(), asked.clone(), gate.clone());
            callers.spawn(async move {
                reviews
                    .answer("t", || async move {
                        asked.fetch_add(1, Ordering::SeqCst);
                        let _open = gate.acquire().await;
                        Ok(true)
                    })
                    .await
            });
        }
        // One thread: yielding runs every caller until it waits, the first
        // on the API server, the others on its review.
        while asked.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        gate.add_permits(100);
        while let Some(answer) = callers.join_next().await {
            assert_eq!(answer.unwrap(), Ok(true));
        }
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        assert_eq!(reviews.answer("t", || async { Ok(false) }).await, Ok(true));
        assert_eq!(
            reviews.answer("other", || async { Ok(false) }).await,
            Ok(false)
        );
        clock.advance(Duration::from_secs(5));
        assert_eq!(reviews.answer("t", || async { Ok(false) }).await, Ok(false));
    }

    #[tokio::test]
    async fn failures_are_remembered_briefly() {
        let clock = ManualClock::at_unix(1_000);
        let reviews = Reviews::new(Duration::from_secs(60), clock.clone());
        let failed = reviews.answer("t", || async { Err("down".into()) }).await;
        assert_eq!(failed, Err("down".into()));
        clock.advance(FAILURE_TTL - Duration::from_millis(1));
        let again = reviews.answer("t", || async { Ok(true) }).await;
        assert_eq!(again, Err("down".into()), "not asked again at once");
        clock.advance(Duration::from_millis(1));
        assert_eq!(reviews.answer("t", || async { Ok(true) }).await, Ok(true));
    }

    #[tokio::test]
    async fn a_full_memory_stays_bounded_and_keeps_the_newest() {
        let clock = ManualClock::at_unix(1_000);
        let reviews = Reviews::new(Duration::from_secs(60), clock.clone());
        for n in 0..=MAX_ENTRIES {
            clock.advance(Duration::from_millis(1));
            let answer = reviews.answer(&n.to_string(), || async { Ok(true) }).await;
            assert_eq!(answer, Ok(true));
        }
        assert!(reviews.answers.len() <= MAX_ENTRIES);
        let remembered = |token: &str| {
            reviews
                .answers
                .get(&SecretHash::of(token.as_bytes()), clock.instant())
        };
        assert_eq!(remembered(&MAX_ENTRIES.to_string()), Some(Ok(true)));
        assert_eq!(remembered("0"), None, "the soonest to expire went");
    }
}
