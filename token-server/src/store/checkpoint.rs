//! WAL checkpoints of the embedded store, off the writer's path. SQLite
//! checkpoints by itself inside the commit that fills the log past 1,000
//! pages: that commit (and every request queued behind the one writer)
//! waits while the pages are copied and both files are synced, 5–10 ms on
//! the development machine, several times a second under load, which was
//! the p99 of opaque issuance. Here the writer never checkpoints; a task
//! with a connection of its own copies pages in the background (`PASSIVE`:
//! the writer goes on), and once the log passes a bound it waits for the
//! writer once (`RESTART`) so that the log starts over instead of growing.
//! Durability is untouched: a commit is in the log before it is answered.

use std::time::Duration;

use sqlx::SqlitePool;

/// When background checkpoints run, and when the log must start over.
#[derive(Debug, Clone, Copy)]
pub(super) struct Checkpoints {
    pub every: Duration,
    /// Log pages (about 4 KiB each) beyond which a checkpoint waits for the
    /// writer and restarts the log.
    pub restart_above: i64,
}

impl Default for Checkpoints {
    fn default() -> Self {
        Self {
            every: Duration::from_millis(200),
            // 64 MiB, the log's journal_size_limit.
            restart_above: 16_384,
        }
    }
}

/// Checkpoints through `pool` (one read-write connection of its own) until
/// the pool is closed.
pub(super) async fn run(pool: SqlitePool, checkpoints: Checkpoints) {
    let mut tick = tokio::time::interval(checkpoints.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if pool.is_closed() {
            return;
        }
        // (busy, pages in the log, pages copied to the database)
        let passive: Result<(i64, i64, i64), _> = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&pool)
            .await;
        let outcome = match passive {
            Ok((_, log, _)) if log > checkpoints.restart_above => {
                sqlx::query("PRAGMA wal_checkpoint(RESTART)")
                    .execute(&pool)
                    .await
                    .map(drop)
            }
            Ok(_) => Ok(()),
            Err(err) => Err(err),
        };
        if let Err(err) = outcome {
            if pool.is_closed() {
                return;
            }
            tracing::warn!(error = %err, "WAL checkpoint failed; retrying");
        }
    }
}
