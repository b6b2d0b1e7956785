//! Files read again while serving: the serving certificate and the client
//! CA bundle. Kubernetes updates a mounted Secret or ConfigMap by swapping
//! a symlink, which file-change notifications miss; so the content is
//! polled and compared, and only a change is parsed.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use super::tls::TlsError;

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// The bytes of some files as last taken into use.
#[derive(Debug)]
pub(crate) struct Files {
    paths: Vec<PathBuf>,
    seen: Mutex<Vec<Vec<u8>>>,
}

impl Files {
    /// Reads `paths` once; the contents are what the caller starts with.
    pub(crate) fn read(paths: &[&Path]) -> Result<(Self, Vec<Vec<u8>>), TlsError> {
        let contents = paths
            .iter()
            .map(|p| read(p))
            .collect::<Result<Vec<_>, _>>()?;
        let files = Self {
            paths: paths.iter().map(|p| p.to_path_buf()).collect(),
            seen: Mutex::new(contents.clone()),
        };
        Ok((files, contents))
    }

    /// Reads the files again and hands their contents to `apply` when they
    /// changed; remembered only once `apply` took them, so contents caught
    /// half-written are tried again at the next call. `Ok(true)`: applied.
    pub(crate) fn reload(
        &self,
        apply: impl FnOnce(&[Vec<u8>]) -> Result<(), TlsError>,
    ) -> Result<bool, TlsError> {
        let contents = self
            .paths
            .iter()
            .map(|p| read(p))
            .collect::<Result<Vec<_>, _>>()?;
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if *seen == contents {
            return Ok(false);
        }
        apply(&contents)?;
        *seen = contents;
        Ok(true)
    }

    /// The first path, to name the files in logs.
    pub(crate) fn name(&self) -> String {
        self.paths
            .first()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }
}

/// Something served from files that [`watch`] reloads.
pub trait Reload: Send + Sync + 'static {
    /// Reads the files again; `Ok(true)` when new contents are in use.
    fn reload(&self) -> Result<bool, TlsError>;
    /// What it is, for logs ("TLS certificate", "client CA bundle").
    fn what(&self) -> &'static str;
    /// Which file, for logs.
    fn file(&self) -> String;
}

/// Calls `reload` every `every` (tokio time), for as long as the runtime
/// runs. An invalid file leaves the previous contents in use and is logged
/// once per failing stretch (a renewal in progress is normal).
pub fn watch(item: Arc<dyn Reload>, every: Duration) {
    let (what, file) = (item.what(), item.file());
    let span = tracing::info_span!("TLS reload", what, %file);
    crate::runtime::spawn(span, async move {
        let mut failing = false;
        loop {
            tokio::time::sleep(every).await;
            match item.reload() {
                Ok(true) => {
                    failing = false;
                    tracing::info!(what, %file, "reloaded");
                }
                Ok(false) => failing = false,
                Err(err) if !failing => {
                    failing = true;
                    tracing::warn!(what, error = %err, "not reloaded; the previous one stays in use");
                }
                Err(_) => {}
            }
        }
    });
}
