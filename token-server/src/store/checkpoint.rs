//! WAL checkpoints of the embedded store, mostly off the writer's path.
//!
//! SQLite checkpoints by itself inside the commit that fills the log past
//! 1,000 pages: that commit, and every request queued behind the one writer,
//! waits while the pages are copied and both files synced (5–10 ms on the
//! development machine, several times a second under load: the p99 of
//! opaque issuance). Here a task with a connection of its own copies the
//! log into the database soon after each write (`PASSIVE`: the writer goes
//! on meanwhile). The writer keeps SQLite's own checkpoint at 1,000 pages,
//! which by then has only the pages since the task's last round to copy,
//! and which starts the log over (a `RESTART` from the task instead stalled
//! the writer 40 ms at a time: it holds the write lock while the writer
//! backs off). While the task is copying, the writer's checkpoint finds the
//! checkpoint lock taken and skips, and the log cannot start over; should
//! the writer find no gap between the task's rounds for long (a loaded
//! machine), the task does `RESTART` once the log passes a bound. Durability
//! is untouched: a commit is in the log before it is answered.

use std::{sync::Arc, time::Duration};

use sqlx::SqlitePool;
use tokio::sync::Notify;

/// How often background checkpoints run, and when the writer does one.
#[derive(Debug, Clone, Copy)]
pub(super) struct Checkpoints {
    /// The least time between two of the task's checkpoints.
    pub pause: Duration,
    /// The writer's `wal_autocheckpoint`: log pages (4 KiB each) past
    /// which its commit checkpoints; 0 never.
    pub writer_after_pages: u32,
    /// Log pages past which the task restarts the log itself, stalling
    /// the writer for that once.
    pub restart_above_pages: i64,
}

impl Default for Checkpoints {
    /// Measured with `bench/run.sh` (docs/performance.md, issue #20).
    fn default() -> Self {
        Self {
            pause: Duration::from_millis(5),
            writer_after_pages: 1_000,
            // 64 MiB, the log's journal_size_limit.
            restart_above_pages: 16_384,
        }
    }
}

/// Checkpoints through `pool` (one read-write connection of its own) after
/// each notice on `logged`, until the pool is closed.
pub(super) async fn run(pool: SqlitePool, checkpoints: Checkpoints, logged: Arc<Notify>) {
    let mut log_pages = 0;
    loop {
        logged.notified().await;
        if pool.is_closed() {
            return;
        }
        let sql = if log_pages > checkpoints.restart_above_pages {
            "PRAGMA wal_checkpoint(RESTART)"
        } else {
            "PRAGMA wal_checkpoint(PASSIVE)"
        };
        // Its row: whether it was blocked, the log's pages, the pages copied.
        match sqlx::query_as::<_, (i64, i64, i64)>(sql)
            .fetch_one(&pool)
            .await
        {
            Ok((_, pages, _)) => log_pages = pages,
            Err(_) if pool.is_closed() => return,
            Err(err) => {
                tracing::warn!(error = %err, "WAL checkpoint failed; retrying after the next write");
            }
        }
        tokio::time::sleep(checkpoints.pause).await;
    }
}
