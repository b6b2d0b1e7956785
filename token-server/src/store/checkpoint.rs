//! WAL checkpoints of the embedded store, mostly off the writer's path.
//! SQLite checkpoints by itself inside the commit that fills the log past
//! 1,000 pages: that commit (and every request queued behind the one
//! writer) waits while the pages are copied and both files synced, 5–10 ms
//! on the development machine, several times a second under load: the p99
//! of opaque issuance. Here a task with a connection of its own copies
//! pages often (`PASSIVE`: the writer goes on), and the writer checkpoints
//! only when the log passes a much larger bound, by then copying just what
//! came since the task's last round; its next write then starts the log
//! over, so the file does not grow. (A `RESTART` from the task instead
//! stalled the writer 40 ms at a time: it holds the write lock while the
//! writer backs off.) Durability is untouched: a commit is in the log
//! before it is answered.

use std::time::Duration;

use sqlx::SqlitePool;

/// When background checkpoints run, and when the writer does one itself.
#[derive(Debug, Clone, Copy)]
pub(super) struct Checkpoints {
    pub every: Duration,
    /// The writer's `wal_autocheckpoint`: log pages (about 4 KiB each)
    /// beyond which its commit checkpoints; 0 never.
    pub writer_after_pages: u32,
}

impl Default for Checkpoints {
    fn default() -> Self {
        Self {
            every: Duration::from_millis(50),
            // 64 MiB, the log's journal_size_limit.
            writer_after_pages: 16_384,
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
        if let Err(err) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            if pool.is_closed() {
                return;
            }
            tracing::warn!(error = %err, "WAL checkpoint failed; retrying");
        }
    }
}
