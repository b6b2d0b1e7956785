//! The one way the configuration changes: a resource applied or deleted
//! through ControlService, or the stored resources reloaded after another
//! replica changed them. Either way the next registry is validated, its keys
//! made sure of, and put in force with a new version.

use std::sync::Arc;

use crate::{
    config::{self, ConfigError},
    keys::{self, KeyError},
    registry::Registry,
    state::{AppState, StoredResources},
};

/// Largest resource document accepted.
pub const MAX_DOCUMENT: usize = 1024 * 1024;

/// A change asked for through ControlService.
#[derive(Debug)]
pub enum Change<'a> {
    /// One resource document (YAML or JSON).
    Apply(&'a str),
    /// A resource by kind and key (`<namespace>/<name>`, or the name).
    Delete { kind: &'a str, key: &'a str },
}

/// What a change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub kind: String,
    pub key: String,
    /// False for the deletion of a resource that was not there.
    pub existed: bool,
    pub version: u64,
}

/// Why a change was not put in force; nothing of it was stored then.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("{0}")]
    Invalid(String),
    #[error("changing the issuer needs a restart of the token server")]
    IssuerChanged,
    #[error("{0}; the change is not stored")]
    Keys(String),
    #[error("{0}")]
    Unavailable(String),
}

impl From<ConfigError> for ChangeError {
    fn from(err: ConfigError) -> Self {
        Self::Invalid(err.to_string())
    }
}

impl AppState {
    /// Validates a change, stores it (so every replica and restart has it),
    /// makes sure its keys exist, and puts it in force.
    pub async fn change(&self, change: Change<'_>) -> Result<Applied, ChangeError> {
        let mut in_force = self.changes.lock().await;
        let current = self.registry.load_full();
        let mut next = (*current).clone();
        let (kind, key, document) = match change {
            Change::Apply(text) => {
                if text.len() > MAX_DOCUMENT {
                    return Err(ChangeError::Invalid(
                        "the document is larger than 1 MiB".into(),
                    ));
                }
                let mut docs = config::parse_documents(None, text)?;
                let (Some(doc), None) = (docs.pop(), docs.pop()) else {
                    return Err(ChangeError::Invalid(
                        "send exactly one resource document".into(),
                    ));
                };
                next.apply(&doc, self.secrets.as_ref())?;
                (doc.resource.kind().to_owned(), doc.origin.name, text)
            }
            Change::Delete { kind, key } => {
                if !next.delete(kind, key) {
                    return Ok(Applied {
                        kind: kind.to_owned(),
                        key: key.to_owned(),
                        existed: false,
                        version: *self.version.borrow(),
                    });
                }
                (kind.to_owned(), key.to_owned(), "")
            }
        };
        next.validate()?;
        if next.server.issuer != current.server.issuer {
            return Err(ChangeError::IssuerChanged);
        }
        keys::check_readable(self.store.as_ref(), &next.server)
            .await
            .map_err(|e| match e {
                KeyError::Store(e) => {
                    ChangeError::Unavailable(format!("cannot read the keys: {e}"))
                }
                other => ChangeError::Keys(other.to_string()),
            })?;
        let stored_key = format!("{kind}/{key}");
        self.store
            .put_resource(&stored_key, document)
            .await
            .map_err(|e| ChangeError::Unavailable(format!("cannot store the change: {e}")))?;
        let version = self.put_in_force(next).await?;
        in_force.put(&stored_key, document);
        Ok(Applied {
            kind,
            key,
            existed: true,
            version,
        })
    }

    /// Rebuilds the registry from the files and the stored resources (after
    /// a change on any replica) and puts it in force. Returns the new
    /// version, or `None` when the stored resources are those already in
    /// force (this replica's own change, seen again), so the version moves
    /// only when the configuration does.
    pub async fn reload(&self) -> Result<Option<u64>, ChangeError> {
        let mut in_force = self.changes.lock().await;
        let stored = self
            .store
            .resources()
            .await
            .map_err(|e| ChangeError::Unavailable(e.to_string()))?;
        let stored_now = StoredResources::from(stored.as_slice());
        if stored_now == *in_force {
            return Ok(None);
        }
        let next = self.source.build(self.secrets.as_ref(), &stored)?;
        let version = self.put_in_force(next).await?;
        *in_force = stored_now;
        Ok(Some(version))
    }

    /// Makes sure the keys `next` signs with exist, then swaps it in and
    /// wakes the watchers. The caller holds the change lock.
    async fn put_in_force(&self, next: Registry) -> Result<u64, ChangeError> {
        self.keys
            .refresh(
                self.store.as_ref(),
                &next.server,
                &next.algorithms_in_use(),
                self.now(),
            )
            .await
            .map_err(|e| ChangeError::Unavailable(e.to_string()))?;
        self.registry.store(Arc::new(next));
        self.version.send_modify(|v| *v += 1);
        Ok(*self.version.borrow())
    }
}
