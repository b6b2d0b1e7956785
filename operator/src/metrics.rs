//! The operator's Prometheus metrics: reconciles by kind and outcome, and
//! their durations.

use std::time::Duration;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Labels {
    pub kind: String,
    /// `ok`, or the error's label.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

pub struct Metrics {
    registry: Registry,
    reconciles: Family<Labels, Counter>,
    durations: Family<KindLabel, Histogram, fn() -> Histogram>,
}

fn histogram() -> Histogram {
    Histogram::new([0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0])
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tokenmesh_operator");
        let reconciles = Family::<Labels, Counter>::default();
        let durations =
            Family::<KindLabel, Histogram, fn() -> Histogram>::new_with_constructor(histogram);
        registry.register(
            "reconciles",
            "Reconciles by kind and result",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile durations by kind",
            durations.clone(),
        );
        Self {
            registry,
            reconciles,
            durations,
        }
    }

    pub fn observe(&self, kind: &str, error: Option<&'static str>, took: Duration) {
        self.reconciles
            .get_or_create(&Labels {
                kind: kind.to_owned(),
                result: error.unwrap_or("ok"),
            })
            .inc();
        self.durations
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
