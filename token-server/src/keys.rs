//! Signing keys: one signing key per algorithm in use, the next one already
//! published, retired ones published until every token they signed expired.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use arc_swap::ArcSwap;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rustls_pki_types::{PrivatePkcs8KeyDer, pem::PemObject};
use tokenmesh_crds::SigningAlgorithm;
use tokenmesh_tokens::{
    Algorithm,
    jwk::JwkSet,
    secret::{SecretHash, random_id},
    signing::SigningKey,
    verify::{KeySet, VerifyingKey},
};

use crate::{
    key_wrap::{self, KeyEncryption},
    registry::ServerSettings,
    store::{Store, StoreError, StoredKey},
};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("signing key {kid}: {message}")]
    Key { kid: String, message: String },
    #[error("key file {path}: {message}")]
    File { path: String, message: String },
}

impl KeyError {
    fn key(kid: &str, message: impl std::fmt::Display) -> Self {
        Self::Key {
            kid: kid.to_owned(),
            message: message.to_string(),
        }
    }
}

pub fn jose_algorithm(alg: SigningAlgorithm) -> Algorithm {
    match alg {
        SigningAlgorithm::ES256 => Algorithm::ES256,
        SigningAlgorithm::RS256 => Algorithm::RS256,
        SigningAlgorithm::PS256 => Algorithm::PS256,
        SigningAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

/// What the ring serves between two maintenance runs.
pub struct KeySnapshot {
    signers: HashMap<Algorithm, Arc<SigningKey>>,
    /// The JWKS document, serialised once.
    pub jwks_json: Arc<str>,
    /// Every published key, for verifying this server's own tokens.
    pub verify: KeySet,
}

impl KeySnapshot {
    pub fn signer(&self, alg: Algorithm) -> Option<&Arc<SigningKey>> {
        self.signers.get(&alg)
    }

    /// The keys that sign now, one per algorithm in use.
    pub fn signers(&self) -> impl Iterator<Item = &Arc<SigningKey>> {
        self.signers.values()
    }
}

pub struct KeyRing {
    current: ArcSwap<KeySnapshot>,
    /// The last look at the store found a key this server cannot open (its
    /// key-encryption secret changed under it): it signs with what it had,
    /// and is not ready.
    unreadable: AtomicBool,
}

/// What maintenance should change, decided from the stored keys alone.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// (algorithm, activates_at) of keys to create.
    pub create: Vec<(SigningAlgorithm, u64)>,
    /// (kid, retires_at, publish_until) of keys to retire.
    pub retire: Vec<(String, u64, u64)>,
    pub delete: Vec<String>,
}

/// Decides rotation at `now`. For each algorithm: a signing key and a
/// published successor; a successor whose time came takes over and the keys
/// before it retire, staying published for `max_ttl` more.
pub fn plan(
    keys: &[StoredKey],
    now: u64,
    algorithms: &[SigningAlgorithm],
    period: u64,
    max_ttl: u64,
) -> Plan {
    let mut plan = Plan::default();
    for key in keys {
        if key.publish_until.is_some_and(|until| until <= now) {
            plan.delete.push(key.kid.clone());
        }
    }
    let leeway = 60;
    for alg in algorithms {
        let mut live: Vec<&StoredKey> = keys
            .iter()
            .filter(|k| k.alg == alg.as_str() && k.retires_at.is_none_or(|r| r > now))
            .collect();
        live.sort_by_key(|k| k.activates_at);
        let active: Vec<&&StoredKey> = live.iter().filter(|k| k.activates_at <= now).collect();
        match active.last() {
            None => {
                // First key of this algorithm: it signs at once (nothing to overlap with).
                plan.create.push((*alg, now));
                plan.create.push((*alg, now.saturating_add(period)));
            }
            Some(newest) => {
                for older in &active[..active.len() - 1] {
                    plan.retire.push((
                        older.kid.clone(),
                        now,
                        now.saturating_add(max_ttl + leeway),
                    ));
                }
                if !live.iter().any(|k| k.activates_at > now) {
                    plan.create.push((
                        *alg,
                        newest.activates_at.saturating_add(period).max(now + 1),
                    ));
                }
            }
        }
    }
    plan
}

impl KeyRing {
    /// Loads keys from PEM files (no rotation) or from the store, rotating as
    /// needed, and builds the first snapshot.
    pub async fn start(
        store: &dyn Store,
        settings: &ServerSettings,
        algorithms: &[SigningAlgorithm],
        now: u64,
    ) -> Result<Self, KeyError> {
        let snapshot = if let Some(dir) = &settings.key_directory {
            from_directory(dir, settings, now)?
        } else if settings.key_files.is_empty() {
            maintain(store, settings, algorithms, now).await?
        } else {
            from_files(settings)?
        };
        Ok(Self {
            current: ArcSwap::from_pointee(snapshot),
            unreadable: AtomicBool::new(false),
        })
    }

    pub fn snapshot(&self) -> arc_swap::Guard<Arc<KeySnapshot>> {
        self.current.load()
    }

    /// Whether the last look at the stored keys found one it cannot open.
    pub fn unreadable(&self) -> bool {
        self.unreadable.load(Ordering::Relaxed)
    }

    /// Swaps in the snapshot built from the store, noting whether every
    /// stored key could be opened (store errors say nothing about that).
    fn take_stored(&self, built: Result<KeySnapshot, KeyError>) -> Result<(), KeyError> {
        match built {
            Ok(snapshot) => {
                self.unreadable.store(false, Ordering::Relaxed);
                self.current.store(Arc::new(snapshot));
                Ok(())
            }
            Err(err) => {
                if matches!(err, KeyError::Key { .. }) {
                    self.unreadable.store(true, Ordering::Relaxed);
                }
                Err(err)
            }
        }
    }

    /// Runs rotation and swaps in the new snapshot (no-op with key files).
    pub async fn refresh(
        &self,
        store: &dyn Store,
        settings: &ServerSettings,
        algorithms: &[SigningAlgorithm],
        now: u64,
    ) -> Result<(), KeyError> {
        if let Some(dir) = &settings.key_directory {
            self.current
                .store(Arc::new(from_directory(dir, settings, now)?));
        } else if settings.key_files.is_empty() {
            self.take_stored(maintain(store, settings, algorithms, now).await)?;
        }
        Ok(())
    }
}

impl KeyRing {
    /// Loads the stored keys as they are, without rotating (another replica
    /// changed them); a no-op with key files or a key directory.
    pub async fn load(
        &self,
        store: &dyn Store,
        settings: &ServerSettings,
        now: u64,
    ) -> Result<(), KeyError> {
        if settings.keys_in_store() {
            let stored = store.signing_keys().await?;
            self.take_stored(snapshot(&stored, now, settings.key_encryption.as_deref()))?;
        }
        Ok(())
    }
}

/// Whether `settings` can open every stored key. A TokenServer change that
/// cannot is refused before it is stored: stored, it would stop every
/// replica from loading its keys, and from starting.
pub async fn check_readable(store: &dyn Store, settings: &ServerSettings) -> Result<(), KeyError> {
    if !settings.keys_in_store() {
        return Ok(());
    }
    for stored in store.signing_keys().await? {
        key_wrap::unwrap_stored(
            settings.key_encryption.as_deref(),
            &stored.kid,
            &stored.alg,
            &stored.pkcs8,
        )
        .map_err(|e| KeyError::key(&stored.kid, e))?;
    }
    Ok(())
}

/// Rotates under the store's rotation lock (one replica at a time); a
/// replica without the lock only loads what the holder decided.
async fn maintain(
    store: &dyn Store,
    settings: &ServerSettings,
    algorithms: &[SigningAlgorithm],
    now: u64,
) -> Result<KeySnapshot, KeyError> {
    let Some(lock) = store.try_lock_rotation().await? else {
        return snapshot(
            &store.signing_keys().await?,
            now,
            settings.key_encryption.as_deref(),
        );
    };
    let result = rotate(store, settings, algorithms, now).await;
    lock.release().await;
    result
}

async fn rotate(
    store: &dyn Store,
    settings: &ServerSettings,
    algorithms: &[SigningAlgorithm],
    now: u64,
) -> Result<KeySnapshot, KeyError> {
    let mut keys = store.signing_keys().await?;
    let encryption = settings.key_encryption.as_deref();
    if let Some(encryption) = encryption {
        reseal_stale_keys(store, encryption, &mut keys).await?;
    }
    let plan = plan(
        &keys,
        now,
        algorithms,
        settings.rotation_period.as_secs(),
        settings.max_ttl.as_secs(),
    );
    for kid in &plan.delete {
        store.delete_signing_key(kid).await?;
        tracing::info!(%kid, "signing key unpublished");
    }
    keys.retain(|k| !plan.delete.contains(&k.kid));
    for (kid, retires_at, publish_until) in &plan.retire {
        if let Some(key) = keys.iter_mut().find(|k| &k.kid == kid) {
            key.retires_at = Some(*retires_at);
            key.publish_until = Some(*publish_until);
            store.save_signing_key(key).await?;
            tracing::info!(%kid, publish_until, "signing key retired");
        }
    }
    for (alg, activates_at) in &plan.create {
        let kid = random_id().map_err(|_| KeyError::key("", "no randomness"))?;
        let key = SigningKey::generate(kid.clone(), jose_algorithm(*alg))
            .map_err(|e| KeyError::key(&kid, e))?;
        let pkcs8 = match encryption {
            Some(encryption) => encryption
                .seal(&kid, alg.as_str(), key.pkcs8())
                .map_err(|e| KeyError::key(&kid, e))?,
            None => key.pkcs8().to_vec(),
        };
        let stored = StoredKey {
            kid: kid.clone(),
            alg: alg.as_str().to_owned(),
            pkcs8,
            created_at: now,
            activates_at: *activates_at,
            retires_at: None,
            publish_until: None,
        };
        store.save_signing_key(&stored).await?;
        tracing::info!(%kid, alg = alg.as_str(), activates_at, "signing key created");
        keys.push(stored);
    }
    snapshot(&keys, now, encryption)
}

/// Keys stored in clear, or under a previous key-encryption secret, are
/// sealed again in place under the current one.
async fn reseal_stale_keys(
    store: &dyn Store,
    encryption: &KeyEncryption,
    keys: &mut [StoredKey],
) -> Result<(), KeyError> {
    let mut resealed = false;
    for key in keys.iter_mut() {
        let opened = encryption
            .open(&key.kid, &key.alg, &key.pkcs8)
            .map_err(|e| KeyError::key(&key.kid, e))?;
        if !opened.stale {
            continue;
        }
        key.pkcs8 = encryption
            .seal(&key.kid, &key.alg, &opened.pkcs8)
            .map_err(|e| KeyError::key(&key.kid, e))?;
        store.save_signing_key(key).await?;
        tracing::info!(kid = %key.kid, "signing key encrypted at rest under the current secret");
        resealed = true;
    }
    if resealed {
        store.forget_overwritten_keys().await?;
    }
    Ok(())
}

fn parse_alg(name: &str) -> Option<SigningAlgorithm> {
    SigningAlgorithm::ALL
        .into_iter()
        .find(|a| a.as_str() == name)
}

fn snapshot(
    keys: &[StoredKey],
    now: u64,
    encryption: Option<&KeyEncryption>,
) -> Result<KeySnapshot, KeyError> {
    let mut signers: HashMap<Algorithm, (u64, Arc<SigningKey>)> = HashMap::new();
    let mut published = Vec::new();
    // One order for the JWKS whatever order the keys come in (just created,
    // or read back by a restart or another replica): clients and caches see
    // the same document from every replica.
    let mut keys: Vec<&StoredKey> = keys.iter().collect();
    keys.sort_by(|a, b| (a.activates_at, &a.kid).cmp(&(b.activates_at, &b.kid)));
    for stored in keys {
        let alg = parse_alg(&stored.alg).ok_or_else(|| {
            KeyError::key(
                &stored.kid,
                format_args!("unknown algorithm {}", stored.alg),
            )
        })?;
        let pkcs8 = key_wrap::unwrap_stored(encryption, &stored.kid, &stored.alg, &stored.pkcs8)
            .map_err(|e| KeyError::key(&stored.kid, e))?;
        let key = SigningKey::from_pkcs8(stored.kid.clone(), jose_algorithm(alg), pkcs8)
            .map_err(|e| KeyError::key(&stored.kid, e))?;
        let key = Arc::new(key);
        let signs = stored.activates_at <= now && stored.retires_at.is_none_or(|r| r > now);
        if signs {
            let entry = signers
                .entry(jose_algorithm(alg))
                .or_insert((stored.activates_at, key.clone()));
            if stored.activates_at >= entry.0 {
                *entry = (stored.activates_at, key.clone());
            }
        }
        published.push(key);
    }
    build(
        signers
            .into_iter()
            .map(|(alg, (_, key))| (alg, key))
            .collect(),
        &published,
    )
}

fn build(
    signers: HashMap<Algorithm, Arc<SigningKey>>,
    published: &[Arc<SigningKey>],
) -> Result<KeySnapshot, KeyError> {
    let jwks = JwkSet {
        keys: published.iter().map(|k| k.public_jwk()).collect(),
    };
    let mut verifying = Vec::new();
    for (key, jwk) in published.iter().zip(&jwks.keys) {
        verifying.push(VerifyingKey::from_jwk(jwk).map_err(|e| KeyError::key(key.kid(), e))?);
    }
    let jwks_json = serde_json::to_string(&jwks).map_err(|e| KeyError::key("", e))?;
    Ok(KeySnapshot {
        signers,
        jwks_json: jwks_json.into(),
        verify: KeySet::new(verifying),
    })
}

/// Keys from a managed folder: `<activatesAt>-<kid>.pem`.
fn from_directory(
    dir: &std::path::Path,
    settings: &ServerSettings,
    now: u64,
) -> Result<KeySnapshot, KeyError> {
    let fail = |path: &std::path::Path, message: String| KeyError::File {
        path: path.display().to_string(),
        message,
    };
    let entries = std::fs::read_dir(dir).map_err(|e| fail(dir, format!("cannot list: {e}")))?;
    let mut keys = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        // Mounted Secrets hold ..data links and the like: only key files count.
        let Some((activates, kid)) = name
            .strip_suffix(".pem")
            .and_then(|stem| stem.split_once('-'))
        else {
            continue;
        };
        let activates_at: u64 = activates
            .parse()
            .map_err(|_| fail(&path, "the name must be <activatesAt>-<kid>.pem".into()))?;
        let der = PrivatePkcs8KeyDer::from_pem_file(&path)
            .map_err(|e| fail(&path, format!("not a PKCS#8 PEM private key: {e}")))?;
        let der = der.secret_pkcs8_der().to_vec();
        let detected = SigningKey::detect_algorithm(&der)
            .ok_or_else(|| fail(&path, "not a P-256, Ed25519 or RSA key".into()))?;
        let alg = match (detected, jose_algorithm(settings.algorithm)) {
            (Algorithm::RS256, Algorithm::PS256) => Algorithm::PS256,
            (detected, _) => detected,
        };
        let key = SigningKey::from_pkcs8(kid.to_owned(), alg, der)
            .map_err(|e| fail(&path, e.to_string()))?;
        keys.push((activates_at, Arc::new(key)));
    }
    keys.sort_by_key(|(at, key)| (*at, key.kid().to_owned()));
    let mut signers = HashMap::new();
    for (at, key) in &keys {
        if *at <= now {
            signers.insert(key.algorithm(), key.clone());
        }
    }
    let published: Vec<Arc<SigningKey>> = keys.into_iter().map(|(_, key)| key).collect();
    build(signers, &published)
}

fn from_files(settings: &ServerSettings) -> Result<KeySnapshot, KeyError> {
    let mut published = Vec::new();
    for path in &settings.key_files {
        let fail = |message: String| KeyError::File {
            path: path.display().to_string(),
            message,
        };
        let der = PrivatePkcs8KeyDer::from_pem_file(path)
            .map_err(|e| fail(format!("not a PKCS#8 PEM private key: {e}")))?;
        let der = der.secret_pkcs8_der().to_vec();
        let detected = SigningKey::detect_algorithm(&der)
            .ok_or_else(|| fail("not a P-256, Ed25519 or RSA key".into()))?;
        let alg = match (detected, jose_algorithm(settings.algorithm)) {
            (Algorithm::RS256, Algorithm::PS256) => Algorithm::PS256,
            (detected, _) => detected,
        };
        // A stable kid from the key itself, so restarts publish the same JWKS.
        let digest = SecretHash::of(&der);
        let kid = URL_SAFE_NO_PAD.encode(&digest.as_bytes()[..12]);
        published.push(Arc::new(
            SigningKey::from_pkcs8(kid, alg, der).map_err(|e| fail(e.to_string()))?,
        ));
    }
    let mut signers = HashMap::new();
    for key in &published {
        signers
            .entry(key.algorithm())
            .or_insert_with(|| key.clone());
    }
    build(signers, &published)
}

#[cfg(test)]
mod tests {
    use super::*;
    use SigningAlgorithm::{ES256, EdDSA};

    fn key(kid: &str, alg: SigningAlgorithm, activates_at: u64) -> StoredKey {
        StoredKey {
            kid: kid.into(),
            alg: alg.as_str().into(),
            pkcs8: vec![],
            created_at: 0,
            activates_at,
            retires_at: None,
            publish_until: None,
        }
    }

    #[test]
    fn first_start_creates_a_signer_and_its_successor() {
        let p = plan(&[], 1000, &[ES256, EdDSA], 100, 50);
        assert_eq!(
            p.create,
            vec![(ES256, 1000), (ES256, 1100), (EdDSA, 1000), (EdDSA, 1100)]
        );
    }

    #[test]
    fn successor_is_published_before_it_signs() {
        let keys = [key("a", ES256, 1000), key("b", ES256, 1100)];
        assert_eq!(plan(&keys, 1050, &[ES256], 100, 50), Plan::default());
    }

    #[test]
    fn rotation_retires_the_old_key_and_keeps_it_published() {
        let keys = [key("a", ES256, 1000), key("b", ES256, 1100)];
        let p = plan(&keys, 1100, &[ES256], 100, 50);
        assert_eq!(p.retire, vec![("a".into(), 1100, 1100 + 50 + 60)]);
        assert_eq!(p.create, vec![(ES256, 1200)]);
        let mut retired = key("a", ES256, 1000);
        retired.retires_at = Some(1100);
        retired.publish_until = Some(1210);
        assert!(
            plan(&[retired.clone()], 1209, &[], 100, 50)
                .delete
                .is_empty()
        );
        assert_eq!(
            plan(&[retired], 1210, &[], 100, 50).delete,
            vec!["a".to_string()]
        );
    }

    #[test]
    fn snapshot_signs_with_the_newest_active_key_and_publishes_all() {
        let generated = |kid: &str, at: u64| {
            let k = SigningKey::generate(kid.into(), Algorithm::ES256).unwrap();
            StoredKey {
                pkcs8: k.pkcs8().to_vec(),
                ..key(kid, ES256, at)
            }
        };
        let keys = [
            generated("old", 10),
            generated("cur", 20),
            generated("next", 30),
        ];
        let snap = snapshot(&keys, 25, None).unwrap();
        assert_eq!(snap.signer(Algorithm::ES256).unwrap().kid(), "cur");
        for kid in ["old", "cur", "next"] {
            assert!(snap.jwks_json.contains(kid));
            assert!(snap.verify.contains_kid(kid));
        }
    }

    /// A restart or another replica reads the keys back in the store's
    /// order, not the order they were created in: the JWKS is the same.
    #[test]
    fn the_jwks_does_not_depend_on_the_order_keys_come_in() {
        let generated = |kid: &str, alg: SigningAlgorithm, at: u64| {
            let k = SigningKey::generate(kid.into(), jose_algorithm(alg)).unwrap();
            StoredKey {
                pkcs8: k.pkcs8().to_vec(),
                ..key(kid, alg, at)
            }
        };
        let created = [
            generated("z-es", ES256, 10),
            generated("y-es", ES256, 20),
            generated("b-ed", EdDSA, 10),
            generated("a-ed", EdDSA, 20),
        ];
        let mut read_back = created.clone();
        read_back.reverse();
        let first = snapshot(&created, 15, None).unwrap();
        let again = snapshot(&read_back, 15, None).unwrap();
        assert_eq!(first.jwks_json, again.jwks_json);
        let kids: Vec<String> = serde_json::from_str::<serde_json::Value>(&first.jwks_json)
            .unwrap()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(kids, ["b-ed", "z-es", "a-ed", "y-es"]);
    }

    #[test]
    fn pem_key_files_sign_and_keep_a_stable_kid() {
        use base64::engine::general_purpose::STANDARD;
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        for (name, alg) in [("ed.pem", Algorithm::EdDSA), ("ec.pem", Algorithm::ES256)] {
            let key = SigningKey::generate("x".into(), alg).unwrap();
            let pem = format!(
                "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
                STANDARD.encode(key.pkcs8())
            );
            let path = dir.path().join(name);
            std::fs::write(&path, pem).unwrap();
            files.push(path);
        }
        let mut settings = crate::registry::Registry::new("http://x".into(), None).server;
        settings.key_files = files;
        let first = from_files(&settings).unwrap();
        let again = from_files(&settings).unwrap();
        assert_eq!(first.jwks_json, again.jwks_json);
        assert!(first.signer(Algorithm::EdDSA).is_some());
        assert!(first.signer(Algorithm::ES256).is_some());
        std::fs::write(dir.path().join("ec.pem"), "not a key").unwrap();
        assert!(matches!(from_files(&settings), Err(KeyError::File { .. })));
    }

    #[test]
    fn a_managed_directory_signs_with_the_newest_active_key_and_publishes_all() {
        use base64::engine::general_purpose::STANDARD;
        let dir = tempfile::tempdir().unwrap();
        for (name, alg) in [
            ("100-old", Algorithm::ES256),
            ("200-current", Algorithm::ES256),
            ("300-next", Algorithm::ES256),
        ] {
            let key = SigningKey::generate("x".into(), alg).unwrap();
            let pem = format!(
                "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
                STANDARD.encode(key.pkcs8())
            );
            std::fs::write(dir.path().join(format!("{name}.pem")), pem).unwrap();
        }
        std::fs::write(dir.path().join("..data"), "mounted-secret bookkeeping").unwrap();
        let settings = crate::registry::Registry::new("http://x".into(), None).server;
        let snap = from_directory(dir.path(), &settings, 250).unwrap();
        assert_eq!(snap.signer(Algorithm::ES256).unwrap().kid(), "current");
        for kid in ["old", "current", "next"] {
            assert!(snap.verify.contains_kid(kid), "{kid} published");
        }
        let later = from_directory(dir.path(), &settings, 300).unwrap();
        assert_eq!(later.signer(Algorithm::ES256).unwrap().kid(), "next");
        std::fs::write(dir.path().join("400-broken.pem"), "nope").unwrap();
        assert!(from_directory(dir.path(), &settings, 300).is_err());
    }
}
