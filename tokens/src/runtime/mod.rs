//! What every tokenmesh binary starts with, written once: the tokio runtime,
//! the log (text or JSON on stderr, filtered by the `--log` flag's
//! `EnvFilter`), optional OpenTelemetry trace export ([`telemetry`]), the
//! shutdown signal that starts the drain ([`Drain`]), [`spawn`] that gives
//! every task a span, and the W3C trace context on HTTP headers
//! ([`trace_context`]).
//!
//! A binary's `run` is one call to [`run`]: it sets the log up inside the
//! runtime (the OTLP exporter needs one), runs the work, flushes the spans
//! it still holds, and reports a failure once, on stderr, as
//! `<binary>: <error>` with a non-zero exit status.

mod drain;
pub mod telemetry;
pub mod trace_context;

use std::{fmt::Display, future::Future, process::ExitCode};

pub use drain::Drain;
pub use telemetry::{LogFormat, Telemetry};
use tracing::Instrument;

/// Runs `work` on a multi-thread runtime with the log of `telemetry`;
/// `Err` is printed once as `<binary>: <error>` and exits with failure.
pub fn run<E: Display>(
    binary: &str,
    telemetry: &Telemetry,
    work: impl Future<Output = Result<(), E>>,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("{binary}: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let exporter = {
        let _inside = runtime.enter();
        telemetry.init()
    };
    let outcome = runtime.block_on(work);
    // Before the runtime goes: the exporter's channel runs on it.
    exporter.flush();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{binary}: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `tokio::spawn`, with the task inside `span` (write
/// `info_span!("what it does", fields...)`): its log lines and trace spans
/// say which task they come from, and a request's span stays its parent.
pub fn spawn<F>(span: tracing::Span, task: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(task.instrument(span))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_spawned_task_runs_inside_its_span() {
        // The test's runtime polls the task on this thread, under this subscriber.
        let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry());
        let task = spawn(tracing::info_span!("named task"), async {
            tracing::Span::current().metadata().map(|m| m.name())
        });
        assert_eq!(task.await.unwrap(), Some("named task"));
    }
}
