//! The shutdown signal and the drain it starts: SIGTERM (what Kubernetes
//! sends) or SIGINT stops the listeners from accepting, work in flight goes
//! on to its end, and a binary waits at most its grace period for it.

use std::{future::Future, time::Duration};

use tokio::sync::watch;

/// Told once when the process should stop; cheap to clone, any number of
/// listeners and tasks may wait on it.
#[derive(Debug, Clone)]
pub struct Drain {
    stopping: watch::Receiver<bool>,
}

/// Starts the drain by hand (tests, or a part that decides to stop).
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

impl Trigger {
    pub fn stop(&self) {
        let _ = self.0.send(true);
    }
}

impl Drain {
    /// A drain and the trigger that starts it.
    pub fn new() -> (Trigger, Self) {
        let (stop, stopping) = watch::channel(false);
        (Trigger(stop), Self { stopping })
    }

    /// A drain that starts at SIGTERM or SIGINT (logged: "shutting down").
    pub fn on_signal() -> Self {
        let (trigger, drain) = Self::new();
        super::spawn(tracing::info_span!("shutdown signal"), async move {
            signal().await;
            tracing::info!("shutting down");
            trigger.stop();
        });
        drain
    }

    /// Resolves once the drain has started.
    pub fn signaled(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stopping = self.stopping.clone();
        async move {
            // A dropped trigger never fires: wait for ever rather than stop.
            if stopping.wait_for(|stop| *stop).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Resolves `grace` after the drain started: how long work in flight
    /// (watch streams never end by themselves) may go on.
    pub fn grace_over(&self, grace: Duration) -> impl Future<Output = ()> + Send + 'static {
        let signaled = self.signaled();
        async move {
            signaled.await;
            tokio::time::sleep(grace).await;
        }
    }
}

async fn signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_are_released_by_the_trigger_only() {
        let (trigger, drain) = Drain::new();
        let waiting = tokio::spawn(drain.grace_over(Duration::ZERO));
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished(), "no signal, no end");
        trigger.stop();
        waiting.await.unwrap();
        // Listeners that come late see it too.
        drain.signaled().await;
    }

    #[tokio::test]
    async fn a_dropped_trigger_is_not_a_signal() {
        let (trigger, drain) = Drain::new();
        drop(trigger);
        let waiting = tokio::spawn(drain.signaled());
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished());
    }
}
