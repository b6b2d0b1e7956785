//! Where `secretRef`s resolve: a Secret's key read as bytes.

use std::path::PathBuf;

use tokenmesh_crds::SecretKeyRef;

/// Shortest client secret accepted: a fast digest is only safe for secrets
/// of high entropy.
pub const MIN_SECRET_LEN: usize = 32;

/// Where `secretRef`s resolve.
pub trait SecretSource: Send + Sync {
    fn read(&self, secret: &SecretKeyRef) -> Result<Vec<u8>, String>;
}

/// Standalone: `<dir>/<name>/<key>`, the layout of a mounted Secret.
pub struct FileSecrets {
    pub dir: PathBuf,
}

impl SecretSource for FileSecrets {
    fn read(&self, secret: &SecretKeyRef) -> Result<Vec<u8>, String> {
        let safe = |part: &str| {
            !part.is_empty() && !part.contains(['/', '\\']) && part != "." && part != ".."
        };
        if !safe(&secret.name) || !safe(&secret.key) {
            return Err("name and key must be plain file names".into());
        }
        let path = self.dir.join(&secret.name).join(&secret.key);
        let mut bytes =
            std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        Ok(bytes)
    }
}
