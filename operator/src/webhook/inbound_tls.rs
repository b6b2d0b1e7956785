//! Inbound TLS for an injected sidecar, so that certificate-bound tokens
//! (RFC 8705, `cnf.x5t#S256`) can reach the application: the pod names a
//! Secret of its namespace holding `tls.crt`, `tls.key` and `ca.crt` (what a
//! cert-manager Certificate from a CA issuer writes), and the sidecar serves
//! its inbound listener with that certificate and asks callers for client
//! certificates of that CA. The sidecar reads the three files again every
//! 5 s, so renewals need no restart.

use k8s_openapi::api::core::v1::{EnvVar, KeyToPath, Pod, SecretVolumeSource, Volume, VolumeMount};

use super::env;

/// Pod annotation: the name of that Secret.
pub const INBOUND_TLS_SECRET: &str = "tokenmesh.dev/inbound-tls-secret";
const VOLUME: &str = "tokenmesh-inbound-tls";
const DIR: &str = "/var/run/secrets/tokenmesh-inbound-tls";

/// What the sidecar needs when the pod asks for inbound TLS: its
/// environment, its mount and the pod's volume.
pub(super) struct InboundTls {
    pub env: Vec<EnvVar>,
    pub mount: VolumeMount,
    pub volume: Volume,
}

pub(super) fn inbound_tls(pod: &Pod) -> Option<InboundTls> {
    let secret = pod
        .metadata
        .annotations
        .as_ref()?
        .get(INBOUND_TLS_SECRET)
        .filter(|name| !name.is_empty())?;
    let file = |name: &str| format!("{DIR}/{name}");
    let item = |name: &str| KeyToPath {
        key: name.into(),
        path: name.into(),
        ..Default::default()
    };
    Some(InboundTls {
        env: vec![
            env("TOKENMESH_SIDECAR_INBOUND_TLS_CERT", file("tls.crt")),
            env("TOKENMESH_SIDECAR_INBOUND_TLS_KEY", file("tls.key")),
            env("TOKENMESH_SIDECAR_INBOUND_CLIENT_CA", file("ca.crt")),
        ],
        mount: VolumeMount {
            name: VOLUME.into(),
            mount_path: DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
        volume: Volume {
            name: VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                items: Some(vec![item("tls.crt"), item("tls.key"), item("ca.crt")]),
                // Readable by the sidecar's user without a pod fsGroup;
                // only the sidecar container mounts it.
                default_mode: Some(0o444),
                ..Default::default()
            }),
            ..Default::default()
        },
    })
}
