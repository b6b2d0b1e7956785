//! OpenTelemetry across the mesh: with trace export on, one request through
//! gateway →(share) orders →(exchange) payments →(embed) ledger is ONE trace
//! at a real OTLP/gRPC receiver (tests/otlp: the collector's TraceService
//! from the opentelemetry-proto package), with a span per hop that names
//! the mode and the policy, and the token server's exchange in it.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::harness::Mesh;

/// The trace the test's own caller starts, and its span.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// tests/otlp/receiver.sh, which appends each span it receives to a file.
struct Receiver {
    child: Child,
    dir: tempfile::TempDir,
    endpoint: String,
}

impl Receiver {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("otlp/receiver.sh");
        let port_file = dir.path().join("port");
        let child = Command::new(script)
            .arg(&port_file)
            .arg(dir.path().join("spans.jsonl"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut receiver = Self {
            child,
            dir,
            endpoint: String::new(),
        };
        // The first run makes its venv (pip install): allow for that.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        let port = loop {
            if let Ok(port) = std::fs::read_to_string(&port_file) {
                break port;
            }
            assert!(
                receiver.child.try_wait().unwrap().is_none(),
                "the OTLP receiver exited"
            );
            assert!(
                tokio::time::Instant::now() < deadline,
                "the OTLP receiver did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        receiver.endpoint = format!("http://127.0.0.1:{}", port.trim());
        receiver
    }

    fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("spans.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// The spans of `trace` once `done` holds of them (at most 20 s).
    async fn wait_for(&self, trace: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let spans: Vec<Value> = self
                .spans()
                .into_iter()
                .filter(|s| s["trace_id"] == trace)
                .collect();
            if done(&spans) {
                return spans;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the trace is incomplete: {spans:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find<'a>(spans: &'a [Value], service: &str, name: &str) -> Option<&'a Value> {
    spans
        .iter()
        .find(|s| s["service"] == service && s["name"] == name)
}

fn every_hop_arrived(spans: &[Value]) -> bool {
    let sidecars = ["gateway-svc", "orders-svc", "payments-svc", "ledger-svc"];
    sidecars
        .iter()
        .all(|svc| find(spans, svc, "sidecar inbound").is_some())
        && sidecars[..3]
            .iter()
            .all(|svc| find(spans, svc, "sidecar outbound").is_some())
        && find(spans, "token-server", "token exchange").is_some()
}

#[tokio::test]
async fn one_request_is_one_trace_across_the_mesh_and_the_token_server() {
    let receiver = Receiver::start().await;
    let mesh = Mesh::start_with(&["--otlp-endpoint".into(), receiver.endpoint.clone()]).await;
    let token = mesh.server.token("frontend", None).await;
    let (status, body, _) = mesh
        .call_traced(&token, &format!("00-{TRACE}-{CALLER_SPAN}-01"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["next"]["next"]["next_status"], 200, "{body}");

    let spans = receiver.wait_for(TRACE, every_hop_arrived).await;

    // The gateway's sidecar continued the caller's trace.
    let gateway_in = find(&spans, "gateway-svc", "sidecar inbound").unwrap();
    assert_eq!(gateway_in["parent_span_id"], CALLER_SPAN, "{gateway_in:#}");
    // Hop by hop: the application's call is a child of its sidecar's inbound
    // span, the next sidecar's inbound a child of the outbound one.
    let chain = [
        ("gateway-svc", "sidecar inbound"),
        ("gateway-svc", "sidecar outbound"),
        ("orders-svc", "sidecar inbound"),
        ("orders-svc", "sidecar outbound"),
        ("payments-svc", "sidecar inbound"),
        ("payments-svc", "sidecar outbound"),
        ("ledger-svc", "sidecar inbound"),
    ];
    for pair in chain.windows(2) {
        let (parent, child) = (
            find(&spans, pair[0].0, pair[0].1).unwrap(),
            find(&spans, pair[1].0, pair[1].1).unwrap(),
        );
        assert_eq!(
            child["parent_span_id"], parent["span_id"],
            "{pair:?}: {spans:#?}"
        );
    }
    // Each hop names how its token was made.
    for (service, mode, policy) in [
        ("gateway-svc", "share", "share-orders"),
        ("orders-svc", "exchange", "orders-to-payments"),
        ("payments-svc", "embed", "embed-ledger"),
    ] {
        let out = find(&spans, service, "sidecar outbound").unwrap();
        assert_eq!(out["attributes"]["tokenmesh.mode"], mode, "{out:#}");
        assert_eq!(out["attributes"]["tokenmesh.policy"], policy, "{out:#}");
    }
    // The token server's exchange joined through the gRPC metadata, under
    // orders' outbound hop, with the policy that allowed it.
    let exchange = find(&spans, "token-server", "token exchange").unwrap();
    assert_eq!(
        exchange["attributes"]["tokenmesh.policy"], "orders-to-payments",
        "{exchange:#}"
    );
    let orders_out = find(&spans, "orders-svc", "sidecar outbound").unwrap();
    let mut ancestor = exchange;
    while ancestor["span_id"] != orders_out["span_id"] {
        ancestor = spans
            .iter()
            .find(|s| s["span_id"] == ancestor["parent_span_id"])
            .unwrap_or_else(|| panic!("the exchange is not under orders' hop: {spans:#?}"));
    }
    // One tree: every span's parent is in the trace, or is the caller.
    for span in &spans {
        let parent = &span["parent_span_id"];
        assert!(
            parent == CALLER_SPAN || spans.iter().any(|s| &s["span_id"] == parent),
            "a span outside the tree: {span:#}"
        );
    }
}
