//! The cluster's keys as the source of the verifier's key set, and what
//! each fetch says about the configured issuer, for readiness.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokenmesh_tokens::keyset::{FetchKeys, Keys};

use super::fetch::{Discovered, FetchError, Fetcher};

/// What discovery said about the configured issuer, for readiness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssuerCheck {
    /// No answer yet.
    Pending,
    /// Discovery named it (or, with none configured, named one).
    Confirmed,
    /// The API server could not be asked: its tokens wait for it, the
    /// other clients need not.
    Unreachable,
    /// Discovery names another issuer: the message names both.
    Mismatch(String),
}

pub struct ClusterKeys {
    pub fetcher: Fetcher,
    /// Named in the log lines of a fetch.
    discovery: String,
    pub check: ArcSwap<IssuerCheck>,
}

impl ClusterKeys {
    pub fn new(fetcher: Fetcher, discovery: &str) -> Self {
        Self {
            fetcher,
            discovery: discovery.to_owned(),
            check: ArcSwap::from_pointee(IssuerCheck::Pending),
        }
    }
}

impl FetchKeys for ClusterKeys {
    type Error = FetchError;

    async fn fetch(&self) -> Result<Keys, FetchError> {
        let discovery = &self.discovery;
        match self.fetcher.keys().await {
            Ok(Discovered { issuer, keys }) => {
                tracing::info!(%issuer, %discovery, "service-account keys fetched");
                self.check.store(Arc::new(IssuerCheck::Confirmed));
                Ok(Keys { issuer, set: keys })
            }
            Err(err) => {
                if let FetchError::IssuerMismatch { .. } = err {
                    tracing::error!(error = %err, "service-account tokens cannot verify: not ready");
                    self.check
                        .store(Arc::new(IssuerCheck::Mismatch(err.to_string())));
                } else {
                    tracing::warn!(%discovery, error = %err, "service-account keys unavailable");
                    self.check.rcu(|check| match **check {
                        IssuerCheck::Pending => Arc::new(IssuerCheck::Unreachable),
                        _ => check.clone(),
                    });
                }
                Err(err)
            }
        }
    }
}
