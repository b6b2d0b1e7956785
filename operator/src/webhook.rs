//! Sidecar injection: a mutating admission webhook around a pure `mutate`.

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, DownwardAPIProjection, DownwardAPIVolumeFile, EnvVar,
    HTTPGetAction, ObjectFieldSelector, Pod, Probe, ProjectedVolumeSource, ResourceRequirements,
    SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::{api::resource::Quantity, util::intstr::IntOrString};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use serde_json::{Value, json};

mod inbound_tls;
pub use inbound_tls::INBOUND_TLS_SECRET;

/// Label (pod) that asks for injection; namespaces are chosen by the
/// MutatingWebhookConfiguration's selector.
pub const INJECT: &str = "tokenmesh.dev/inject";
/// Annotation: `"false"` opts a pod out.
pub const OPT_OUT: &str = "tokenmesh.dev/inject";
pub const CLIENT_ID: &str = "tokenmesh.dev/client-id";
pub const AUDIENCE: &str = "tokenmesh.dev/audience";
pub const APP_PORT: &str = "tokenmesh.dev/app-port";
pub const CAPTURE: &str = "tokenmesh.dev/capture";
pub const CAPTURE_OUTBOUND: &str = "tokenmesh.dev/capture-outbound";
pub const INBOUND_PORTS: &str = "tokenmesh.dev/inbound-ports";
pub const EXCLUDE_PORTS: &str = "tokenmesh.dev/exclude-outbound-ports";
pub const EXCLUDE_CIDRS: &str = "tokenmesh.dev/exclude-outbound-cidrs";
/// Annotation: `"true"` or `"false"`, whether inbound DPoP proofs must carry
/// a nonce of the sidecar's (its `--dpop-require-nonce`); default
/// [`InjectConfig::dpop_require_nonce`].
pub const DPOP_REQUIRE_NONCE: &str = "tokenmesh.dev/dpop-require-nonce";
/// Annotation: the URL clients call the pod's service by, the resource of
/// its protected-resource metadata (the sidecar's `--resource-url`).
pub const RESOURCE_URL: &str = "tokenmesh.dev/resource-url";
/// Annotation the webhook writes: the CA (PEM) the sidecar trusts for the
/// token server, which the pod's token volume shows as a file. A pod
/// annotation needs no object in the pod's namespace and no RBAC there.
pub const TOKEN_SERVER_CA: &str = "tokenmesh.dev/token-server-ca";
const CA_FILE: &str = "ca.crt";
const CAPTURE_CONTAINER: &str = "tokenmesh-capture";
pub const SIDECAR: &str = "tokenmesh-sidecar";
const TOKEN_VOLUME: &str = "tokenmesh-token";
const TOKEN_DIR: &str = "/var/run/secrets/tokenmesh";
const INBOUND_PORT: i32 = 15006;
const OUTBOUND_PORT: i32 = 15001;
const ADMIN_PORT: i32 = 15020;
/// The sidecar's user id (capture rules exclude its traffic by it).
pub const SIDECAR_UID: i64 = 1337;

/// What every injected sidecar gets.
#[derive(Debug, Clone)]
pub struct InjectConfig {
    pub image: String,
    /// Redirect inbound traffic through the sidecar with an init container
    /// (`tokenmesh.dev/capture: "false"` opts a pod out).
    pub capture: bool,
    /// Redirect outbound traffic too, by default (annotation `tokenmesh.dev/capture-outbound`).
    pub capture_outbound: bool,
    /// CIDRs never captured outbound (the token server's, at least).
    pub exclude_outbound_cidrs: Vec<String>,
    /// The token server's gRPC URL, as pods reach it.
    pub token_server: String,
    /// The audience of the projected service-account token.
    pub token_audience: String,
    /// The CA (PEM) of an https:// token server, given to the sidecar.
    pub token_server_ca: Option<String>,
    /// Where the sidecar exports its trace spans (OTLP/gRPC); none: no export.
    pub otlp_endpoint: Option<String>,
    /// Inbound DPoP proofs must carry a sidecar nonce, by default
    /// (annotation `tokenmesh.dev/dpop-require-nonce`).
    pub dpop_require_nonce: bool,
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// The sidecar container for `pod`.
fn sidecar(pod: &Pod, config: &InjectConfig) -> Container {
    let meta = &pod.metadata;
    let annotation = |key: &str| meta.annotations.as_ref().and_then(|a| a.get(key)).cloned();
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let spec = pod.spec.as_ref();
    let account = spec
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    // The audience defaults to the client id, which names the namespace:
    // the service account's bare name would let `team-a/default` accept
    // tokens addressed to `team-b/default`.
    let client_id = annotation(CLIENT_ID).unwrap_or(format!("{namespace}/{account}"));
    let audience = annotation(AUDIENCE).unwrap_or_else(|| client_id.clone());
    // Only `false` turns the nonces off: a mistyped value ("ture", "no ")
    // must not quietly drop a check the chart asked for.
    let require_nonce = annotation(DPOP_REQUIRE_NONCE).map_or(config.dpop_require_nonce, |v| {
        let off = v.trim().eq_ignore_ascii_case("false");
        if !off && !v.trim().eq_ignore_ascii_case("true") {
            tracing::warn!(annotation = DPOP_REQUIRE_NONCE, value = %v, "neither true nor false: nonces required");
        }
        !off
    });
    // Checked by the sidecar, which refuses to start with a bad one.
    let resource_url = annotation(RESOURCE_URL).filter(|url| !url.trim().is_empty());
    let app_port = annotation(APP_PORT)
        .and_then(|p| p.parse::<i32>().ok())
        .or_else(|| {
            spec.and_then(|s| {
                s.containers
                    .iter()
                    .flat_map(|c| c.ports.iter().flatten())
                    .map(|p| p.container_port)
                    .next()
            })
        })
        .unwrap_or(8080);
    let probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(ADMIN_PORT),
            ..Default::default()
        }),
        period_seconds: Some(5),
        ..Default::default()
    };
    Container {
        name: SIDECAR.into(),
        image: Some(config.image.clone()),
        env: Some(
            vec![
                env("TOKENMESH_SIDECAR_TOKEN_SERVER", &config.token_server),
                env("TOKENMESH_SIDECAR_CLIENT_ID", client_id),
                env(
                    "TOKENMESH_SIDECAR_SERVICE_ACCOUNT_TOKEN_FILE",
                    format!("{TOKEN_DIR}/token"),
                ),
                env("TOKENMESH_SIDECAR_AUDIENCE", audience),
                env(
                    "TOKENMESH_SIDECAR_INBOUND_ADDR",
                    format!("0.0.0.0:{INBOUND_PORT}"),
                ),
                env(
                    "TOKENMESH_SIDECAR_APP_ADDR",
                    format!("127.0.0.1:{app_port}"),
                ),
                env(
                    "TOKENMESH_SIDECAR_OUTBOUND_ADDR",
                    format!("127.0.0.1:{OUTBOUND_PORT}"),
                ),
                env(
                    "TOKENMESH_SIDECAR_ADMIN_ADDR",
                    format!("0.0.0.0:{ADMIN_PORT}"),
                ),
                env("TOKENMESH_SIDECAR_LOG_FORMAT", "json"),
            ]
            .into_iter()
            .chain(config.token_server_ca.as_ref().map(|_| {
                env(
                    "TOKENMESH_SIDECAR_TOKEN_SERVER_CA",
                    format!("{TOKEN_DIR}/{CA_FILE}"),
                )
            }))
            .chain(
                config
                    .otlp_endpoint
                    .as_ref()
                    .map(|endpoint| env("TOKENMESH_SIDECAR_OTLP_ENDPOINT", endpoint.clone())),
            )
            .chain(require_nonce.then(|| env("TOKENMESH_SIDECAR_DPOP_REQUIRE_NONCE", "true")))
            .chain(resource_url.map(|url| env("TOKENMESH_SIDECAR_RESOURCE_URL", url.trim())))
            .collect(),
        ),
        ports: Some(vec![
            ContainerPort {
                name: Some("tm-inbound".into()),
                container_port: INBOUND_PORT,
                ..Default::default()
            },
            ContainerPort {
                name: Some("tm-admin".into()),
                container_port: ADMIN_PORT,
                ..Default::default()
            },
        ]),
        readiness_probe: Some(probe("/readyz")),
        liveness_probe: Some(probe("/healthz")),
        resources: Some(ResourceRequirements {
            requests: Some(
                [
                    ("cpu".into(), Quantity("10m".into())),
                    ("memory".into(), Quantity("16Mi".into())),
                ]
                .into(),
            ),
            limits: Some([("memory".into(), Quantity("128Mi".into()))].into()),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(SIDECAR_UID),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: TOKEN_VOLUME.into(),
            mount_path: TOKEN_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

/// The init container that installs the redirection rules, with only
/// NET_ADMIN and NET_RAW; `None` when the pod runs in explicit-proxy mode.
fn capture(pod: &Pod, config: &InjectConfig) -> Option<Container> {
    let annotation = |key: &str| {
        pod.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .cloned()
    };
    if !config.capture || annotation(CAPTURE).is_some_and(|v| v == "false") {
        return None;
    }
    let ports = annotation(INBOUND_PORTS).unwrap_or_else(|| {
        let spec = pod.spec.as_ref();
        let ports: Vec<String> = spec
            .map(|s| s.containers.iter().flat_map(|c| c.ports.iter().flatten()))
            .into_iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().is_none_or(|proto| proto == "TCP"))
            .map(|p| p.container_port.to_string())
            .collect();
        ports.join(",")
    });
    let outbound = annotation(CAPTURE_OUTBOUND).map_or(config.capture_outbound, |v| v == "true");
    let mut cidrs = config.exclude_outbound_cidrs.clone();
    cidrs.extend(
        annotation(EXCLUDE_CIDRS)
            .into_iter()
            .flat_map(|v| v.split(',').map(str::to_owned).collect::<Vec<_>>()),
    );
    let mut vars = vec![
        env("TOKENMESH_CAPTURE_INBOUND_PORTS", ports),
        env(
            "TOKENMESH_CAPTURE_SIDECAR_INBOUND_PORT",
            INBOUND_PORT.to_string(),
        ),
        env("TOKENMESH_CAPTURE_OUTBOUND", outbound.to_string()),
        env(
            "TOKENMESH_CAPTURE_SIDECAR_OUTBOUND_PORT",
            OUTBOUND_PORT.to_string(),
        ),
        env("TOKENMESH_CAPTURE_SIDECAR_UID", SIDECAR_UID.to_string()),
        env("TOKENMESH_CAPTURE_EXCLUDE_OUTBOUND_CIDRS", cidrs.join(",")),
    ];
    if let Some(ports) = annotation(EXCLUDE_PORTS) {
        vars.push(env("TOKENMESH_CAPTURE_EXCLUDE_OUTBOUND_PORTS", ports));
    }
    Some(Container {
        name: CAPTURE_CONTAINER.into(),
        image: Some(config.image.clone()),
        command: Some(vec!["tokenmesh-capture".into(), "install".into()]),
        env: Some(vars),
        resources: Some(ResourceRequirements {
            requests: Some(
                [
                    ("cpu".into(), Quantity("10m".into())),
                    ("memory".into(), Quantity("8Mi".into())),
                ]
                .into(),
            ),
            limits: Some([("memory".into(), Quantity("64Mi".into()))].into()),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            // iptables needs root in the pod's network namespace, with only these two capabilities.
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The sidecar's projected service-account token, and the token server's
/// CA from the pod's annotation when there is one.
fn token_volume(config: &InjectConfig) -> Volume {
    let token = VolumeProjection {
        service_account_token: Some(ServiceAccountTokenProjection {
            audience: Some(config.token_audience.clone()),
            expiration_seconds: Some(3600),
            path: "token".into(),
        }),
        ..Default::default()
    };
    let ca = config.token_server_ca.as_ref().map(|_| VolumeProjection {
        downward_api: Some(DownwardAPIProjection {
            items: Some(vec![DownwardAPIVolumeFile {
                path: CA_FILE.into(),
                field_ref: Some(ObjectFieldSelector {
                    field_path: format!("metadata.annotations['{TOKEN_SERVER_CA}']"),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
        }),
        ..Default::default()
    });
    Volume {
        name: TOKEN_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some([token].into_iter().chain(ca).collect()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn env_value<'a>(container: &'a Container, name: &str) -> Option<&'a str> {
    container
        .env
        .iter()
        .flatten()
        .find(|v| v.name == name)
        .and_then(|v| v.value.as_deref())
}

/// kubelet's HTTP probes of captured ports carry no token, so the sidecar
/// would refuse them: they move to the sidecar's admin port, which answers
/// each one with the application's answer. Returns the JSON Patch operations,
/// the sidecar's `--app-probe` values and its `--app-probe-header` values (the
/// sidecar passes on only the headers a probe names, never a caller's
/// `Authorization` or `Cookie`). Probes to another host, HTTPS probes (the
/// sidecar's inbound listener speaks plain HTTP) and ports not captured are
/// left as they are.
fn rewrite_probes(pod: &Pod, captured: &[i32]) -> (Vec<Value>, Vec<String>, Vec<String>) {
    let (mut ops, mut probes, mut headers) = (Vec::new(), Vec::new(), Vec::new());
    let containers = pod.spec.as_ref().map(|s| s.containers.as_slice());
    for (index, container) in containers.unwrap_or_default().iter().enumerate() {
        let kinds = [
            ("livenessProbe", "livez", &container.liveness_probe),
            ("readinessProbe", "readyz", &container.readiness_probe),
            ("startupProbe", "startupz", &container.startup_probe),
        ];
        for (field, kind, probe) in kinds {
            let Some(get) = probe.as_ref().and_then(|p| p.http_get.as_ref()) else {
                continue;
            };
            let https = get
                .scheme
                .as_deref()
                .is_some_and(|s| s.eq_ignore_ascii_case("https"));
            if get.host.is_some() || https {
                continue;
            }
            let port = match &get.port {
                IntOrString::Int(port) => Some(*port),
                IntOrString::String(name) => container
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(name))
                    .map(|p| p.container_port),
            };
            let Some(port) = port.filter(|p| captured.contains(p)) else {
                continue;
            };
            let path = format!("/app-health/{}/{kind}", container.name);
            let target = get.path.as_deref().unwrap_or("/");
            let slash = if target.starts_with('/') { "" } else { "/" };
            probes.push(format!("{path}={port}{slash}{target}"));
            // Credential headers stay behind: the sidecar refuses to pass
            // them on (their value would come from the admin port's caller).
            let credential = ["authorization", "proxy-authorization", "cookie"];
            for header in get.http_headers.iter().flatten() {
                if !credential.contains(&header.name.to_ascii_lowercase().as_str()) {
                    headers.push(format!("{path}={}", header.name));
                }
            }
            let moved = HTTPGetAction {
                path: Some(path),
                port: IntOrString::Int(ADMIN_PORT),
                scheme: Some("HTTP".into()),
                ..get.clone()
            };
            ops.push(json!({"op": "replace", "path": format!("/spec/containers/{index}/{field}/httpGet"), "value": moved}));
        }
    }
    (ops, probes, headers)
}

/// Whether `pod` is to be injected: not opted out, not injected already.
pub fn wants_sidecar(pod: &Pod) -> bool {
    let opted_out = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(OPT_OUT))
        .is_some_and(|v| v == "false");
    let injected = pod
        .spec
        .as_ref()
        .is_some_and(|s| s.containers.iter().any(|c| c.name == SIDECAR));
    !opted_out && !injected && pod.spec.is_some()
}

/// The JSON Patch that injects the sidecar, or `None` to leave the pod alone.
pub fn mutate(
    pod: &Pod,
    config: &InjectConfig,
) -> Result<Option<json_patch::Patch>, serde_json::Error> {
    if !wants_sidecar(pod) {
        return Ok(None);
    }
    let mut ops: Vec<Value> = Vec::new();
    let spec = pod.spec.as_ref();
    let init = capture(pod, config);
    let captured_ports: Vec<i32> = init
        .as_ref()
        .and_then(|c| env_value(c, "TOKENMESH_CAPTURE_INBOUND_PORTS"))
        .map(|ports| {
            ports
                .split(',')
                .filter_map(|p| p.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let (probe_ops, probes, probe_headers) = rewrite_probes(pod, &captured_ports);
    let mut sidecar = sidecar(pod, config);
    let sidecar_env = sidecar.env.get_or_insert_with(Vec::new);
    if !probes.is_empty() {
        sidecar_env.push(env("TOKENMESH_SIDECAR_APP_PROBES", probes.join(",")));
    }
    if !probe_headers.is_empty() {
        sidecar_env.push(env(
            "TOKENMESH_SIDECAR_APP_PROBE_HEADERS",
            probe_headers.join(","),
        ));
    }
    let mut volumes = vec![token_volume(config)];
    if let Some(tls) = inbound_tls::inbound_tls(pod) {
        sidecar_env.extend(tls.env);
        sidecar
            .volume_mounts
            .get_or_insert_with(Vec::new)
            .push(tls.mount);
        volumes.push(tls.volume);
    }
    ops.push(json!({"op": "add", "path": "/spec/containers/-", "value": sidecar}));
    ops.extend(probe_ops);
    match spec.and_then(|s| s.volumes.as_ref()) {
        Some(_) => {
            for volume in volumes {
                ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": volume}));
            }
        }
        None => ops.push(json!({"op": "add", "path": "/spec/volumes", "value": volumes})),
    }
    let outbound_captured = init
        .as_ref()
        .and_then(|c| env_value(c, "TOKENMESH_CAPTURE_OUTBOUND"))
        .is_some_and(|v| v == "true");
    if let Some(init) = init {
        // First, so no other init container runs unprotected.
        match spec.and_then(|s| s.init_containers.as_ref()) {
            Some(_) => {
                ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": init}))
            }
            None => ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [init]})),
        }
    }
    // Without outbound capture the application calls other services through
    // the sidecar as an HTTP proxy.
    let proxy = format!("http://127.0.0.1:{OUTBOUND_PORT}");
    let containers = if outbound_captured {
        &[][..]
    } else {
        spec.map(|s| s.containers.as_slice()).unwrap_or_default()
    };
    for (index, container) in containers.iter().enumerate() {
        let vars = [env("HTTP_PROXY", &proxy), env("http_proxy", &proxy)];
        match &container.env {
            Some(_) => {
                for var in vars {
                    ops.push(json!({"op": "add", "path": format!("/spec/containers/{index}/env/-"), "value": var}));
                }
            }
            None => ops.push(json!({"op": "add", "path": format!("/spec/containers/{index}/env"), "value": vars})),
        }
    }
    let mut annotations = vec![("tokenmesh.dev/injected", "true")];
    if let Some(ca) = &config.token_server_ca {
        annotations.push((TOKEN_SERVER_CA, ca));
    }
    match &pod.metadata.annotations {
        Some(_) => {
            for (key, value) in annotations {
                let key = key.replace('~', "~0").replace('/', "~1");
                ops.push(json!({"op": "add", "path": format!("/metadata/annotations/{key}"), "value": value}));
            }
        }
        None => {
            let map: serde_json::Map<String, Value> = annotations
                .into_iter()
                .map(|(k, v)| (k.to_owned(), Value::from(v)))
                .collect();
            ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": map}));
        }
    }
    serde_json::from_value(Value::Array(ops)).map(Some)
}

/// Answers one AdmissionReview. A malformed review gets a clear error
/// response; a pod the webhook should not touch is allowed unchanged.
pub fn review(body: &Value, config: &InjectConfig) -> Value {
    let review: AdmissionReview<Pod> = match serde_json::from_value(body.clone()) {
        Ok(review) => review,
        Err(err) => {
            return serde_json::to_value(
                AdmissionResponse::invalid(format!("not an AdmissionReview of a Pod: {err}"))
                    .into_review(),
            )
            .unwrap_or_default();
        }
    };
    let request: AdmissionRequest<Pod> = match review.try_into() {
        Ok(request) => request,
        Err(err) => {
            return serde_json::to_value(AdmissionResponse::invalid(err.to_string()).into_review())
                .unwrap_or_default();
        }
    };
    let response = AdmissionResponse::from(&request);
    let response = match request.object.as_ref().map(|pod| mutate(pod, config)) {
        None | Some(Ok(None)) => response,
        Some(Ok(Some(patch))) => match response.clone().with_patch(patch) {
            Ok(patched) => patched,
            Err(err) => response.deny(format!("cannot build the injection patch: {err}")),
        },
        Some(Err(err)) => response.deny(format!("cannot build the injection patch: {err}")),
    };
    serde_json::to_value(response.into_review()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> InjectConfig {
        InjectConfig {
            image: "ghcr.io/tokenmesh/sidecar:0.1.0".into(),
            token_server: "http://tokenmesh-token-server.tokenmesh:8081".into(),
            token_audience: "tokenmesh".into(),
            token_server_ca: None,
            capture: false,
            capture_outbound: false,
            exclude_outbound_cidrs: vec!["10.96.0.20/32".into()],
            otlp_endpoint: None,
            dpop_require_nonce: false,
        }
    }

    fn admission(pod: Value) -> Value {
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                "name": "orders-1",
                "namespace": "shop",
                "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": pod,
                "oldObject": null,
                "dryRun": false,
                "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
            }
        })
    }

    fn pod(annotations: Value, containers: Value) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "orders-1", "namespace": "shop", "labels": {"tokenmesh.dev/inject": "true"}, "annotations": annotations},
            "spec": {"serviceAccountName": "orders", "containers": containers}
        })
    }

    fn patched(review: &Value, original: &Value) -> Value {
        use base64::Engine;
        let response = &review["response"];
        assert_eq!(response["allowed"], true, "{review}");
        assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        // kube serialises the patch bytes as a JSON array (which the API
        // server's []byte decoding accepts), base64 is the other form.
        let patch: Vec<u8> = match &response["patch"] {
            Value::String(encoded) => base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .unwrap(),
            Value::Array(bytes) => bytes
                .iter()
                .map(|b| u8::try_from(b.as_u64().unwrap()).unwrap())
                .collect(),
            other => panic!("no patch: {other}"),
        };
        assert_eq!(response["patchType"], "JSONPatch");
        let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
        let mut pod = original.clone();
        json_patch::patch(&mut pod, &patch).unwrap();
        pod
    }

    #[test]
    fn injects_sidecar_token_volume_and_proxy() {
        let original = pod(
            json!({}),
            json!([{"name": "app", "image": "orders", "ports": [{"containerPort": 9000}]}]),
        );
        let result = patched(&review(&admission(original.clone()), &config()), &original);
        let containers = result["spec"]["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 2);
        let sidecar = &containers[1];
        assert_eq!(sidecar["name"], SIDECAR);
        let env: std::collections::HashMap<&str, &str> = sidecar["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap(), e["value"].as_str().unwrap()))
            .collect();
        assert_eq!(env["TOKENMESH_SIDECAR_CLIENT_ID"], "shop/orders");
        assert_eq!(env["TOKENMESH_SIDECAR_APP_ADDR"], "127.0.0.1:9000");
        assert_eq!(env["TOKENMESH_SIDECAR_AUDIENCE"], "shop/orders");
        assert_eq!(sidecar["securityContext"]["runAsNonRoot"], true);
        assert_eq!(sidecar["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(
            result["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["audience"],
            "tokenmesh"
        );
        assert_eq!(
            containers[0]["env"][0],
            json!({"name": "HTTP_PROXY", "value": "http://127.0.0.1:15001"})
        );
        assert_eq!(
            result["metadata"]["annotations"]["tokenmesh.dev/injected"],
            "true"
        );
    }

    fn sidecar_env(pod: &Value) -> std::collections::HashMap<String, String> {
        let result = patched(&review(&admission(pod.clone()), &config()), pod);
        result["spec"]["containers"][1]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap().into(),
                    e["value"].as_str().unwrap().into(),
                )
            })
            .collect()
    }

    #[test]
    fn same_service_account_in_two_namespaces_gets_two_audiences() {
        let in_namespace = |namespace: &str| {
            let mut pod = pod(json!({}), json!([{"name": "app", "image": "x"}]));
            pod["metadata"]["namespace"] = json!(namespace);
            pod["spec"]["serviceAccountName"] = json!("default");
            sidecar_env(&pod)
        };
        let (a, b) = (in_namespace("team-a"), in_namespace("team-b"));
        assert_eq!(a["TOKENMESH_SIDECAR_AUDIENCE"], "team-a/default");
        assert_eq!(b["TOKENMESH_SIDECAR_AUDIENCE"], "team-b/default");
        assert_eq!(a["TOKENMESH_SIDECAR_CLIENT_ID"], "team-a/default");

        // Annotations still choose: the client id, and the audience with it
        // unless the audience is named too.
        let annotated = |annotations: Value| {
            sidecar_env(&pod(annotations, json!([{"name": "app", "image": "x"}])))
        };
        let env = annotated(json!({"tokenmesh.dev/client-id": "shop/orders-v2"}));
        assert_eq!(env["TOKENMESH_SIDECAR_AUDIENCE"], "shop/orders-v2");
        let env = annotated(json!({"tokenmesh.dev/audience": "https://orders.shop.example"}));
        assert_eq!(
            env["TOKENMESH_SIDECAR_AUDIENCE"],
            "https://orders.shop.example"
        );
        assert_eq!(env["TOKENMESH_SIDECAR_CLIENT_ID"], "shop/orders");
    }

    #[test]
    fn injection_is_idempotent_and_respects_opt_out() {
        let original = pod(
            json!({}),
            json!([{"name": "app", "image": "orders", "env": [{"name": "A", "value": "1"}]}]),
        );
        let once = patched(&review(&admission(original.clone()), &config()), &original);
        let twice = review(&admission(once.clone()), &config());
        assert_eq!(twice["response"]["allowed"], true);
        assert!(
            twice["response"].get("patch").is_none_or(Value::is_null),
            "already injected: no patch"
        );
        let opted_out = pod(
            json!({"tokenmesh.dev/inject": "false"}),
            json!([{"name": "app", "image": "x"}]),
        );
        let answer = review(&admission(opted_out), &config());
        assert_eq!(answer["response"]["allowed"], true);
        assert!(answer["response"].get("patch").is_none_or(Value::is_null));
    }

    #[test]
    fn a_malformed_review_gets_a_clear_error() {
        let answer = review(
            &json!({"kind": "AdmissionReview", "request": {"uid": 7}}),
            &config(),
        );
        assert_eq!(answer["response"]["allowed"], false);
        assert!(
            answer["response"]["status"]["message"]
                .as_str()
                .unwrap()
                .contains("AdmissionReview"),
            "{answer}"
        );
    }

    #[test]
    fn a_pods_inbound_tls_secret_gives_the_sidecar_its_certificate_and_client_ca() {
        let dir = "/var/run/secrets/tokenmesh-inbound-tls";
        for volumes in [None, Some(json!([{"name": "data", "emptyDir": {}}]))] {
            let mut original = pod(
                json!({INBOUND_TLS_SECRET: "orders-tls"}),
                json!([{"name": "app", "image": "orders"}]),
            );
            if let Some(volumes) = &volumes {
                original["spec"]["volumes"] = volumes.clone();
            }
            let result = patched(&review(&admission(original.clone()), &config()), &original);
            let env = sidecar_env(&original);
            assert_eq!(
                env["TOKENMESH_SIDECAR_INBOUND_TLS_CERT"],
                format!("{dir}/tls.crt")
            );
            assert_eq!(
                env["TOKENMESH_SIDECAR_INBOUND_TLS_KEY"],
                format!("{dir}/tls.key")
            );
            assert_eq!(
                env["TOKENMESH_SIDECAR_INBOUND_CLIENT_CA"],
                format!("{dir}/ca.crt")
            );
            let sidecar = &result["spec"]["containers"][1];
            assert_eq!(
                sidecar["volumeMounts"][1],
                json!({"name": "tokenmesh-inbound-tls", "mountPath": dir, "readOnly": true})
            );
            // The application's containers do not see the key.
            assert!(
                result["spec"]["containers"][0]
                    .get("volumeMounts")
                    .is_none()
            );
            let all = result["spec"]["volumes"].as_array().unwrap();
            let tls = all
                .iter()
                .find(|v| v["name"] == "tokenmesh-inbound-tls")
                .unwrap();
            assert_eq!(
                tls["secret"],
                json!({"secretName": "orders-tls", "defaultMode": 0o444, "items": [
                    {"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"},
                    {"key": "ca.crt", "path": "ca.crt"}]})
            );
            assert_eq!(all.len(), if volumes.is_some() { 3 } else { 2 });
        }
        // Without the annotation, plain HTTP as before.
        let env = sidecar_env(&pod(json!({}), json!([{"name": "app", "image": "orders"}])));
        assert!(
            !env.keys()
                .any(|k| k.contains("INBOUND_TLS") || k.contains("CLIENT_CA"))
        );
    }

    #[test]
    fn dpop_nonces_are_required_by_the_default_or_the_pods_annotation() {
        let app = json!([{"name": "app", "image": "orders"}]);
        let nonce = |annotations: Value, default: bool| {
            let config = InjectConfig {
                dpop_require_nonce: default,
                ..config()
            };
            let original = pod(annotations, app.clone());
            let result = patched(&review(&admission(original.clone()), &config), &original);
            result["spec"]["containers"][1]["env"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == "TOKENMESH_SIDECAR_DPOP_REQUIRE_NONCE")
                .map(|e| e["value"].as_str().unwrap().to_owned())
        };
        assert_eq!(
            nonce(json!({}), false),
            None,
            "not asked: the flag stays off"
        );
        assert_eq!(nonce(json!({}), true).as_deref(), Some("true"));
        assert_eq!(
            nonce(json!({DPOP_REQUIRE_NONCE: "true"}), false).as_deref(),
            Some("true"),
            "a pod asks for it"
        );
        assert_eq!(
            nonce(json!({DPOP_REQUIRE_NONCE: "false"}), true),
            None,
            "a pod opts out of the chart's default"
        );
        assert_eq!(
            nonce(json!({DPOP_REQUIRE_NONCE: "ture"}), true).as_deref(),
            Some("true"),
            "a mistyped value keeps the nonces"
        );
    }

    #[test]
    fn a_pods_resource_url_annotation_reaches_its_sidecar() {
        let app = json!([{"name": "app", "image": "orders"}]);
        let env = sidecar_env(&pod(
            json!({RESOURCE_URL: "https://api.shop.example/orders"}),
            app.clone(),
        ));
        assert_eq!(
            env["TOKENMESH_SIDECAR_RESOURCE_URL"],
            "https://api.shop.example/orders"
        );
        for annotations in [json!({}), json!({RESOURCE_URL: " "})] {
            let env = sidecar_env(&pod(annotations, app.clone()));
            assert!(!env.contains_key("TOKENMESH_SIDECAR_RESOURCE_URL"));
        }
    }

    #[test]
    fn the_sidecar_trusts_the_token_servers_ca_from_its_pods_annotation() {
        let ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let tls = InjectConfig {
            token_server: "https://tokenmesh-token-server.tokenmesh.svc:8081".into(),
            token_server_ca: Some(ca.into()),
            ..config()
        };
        for annotations in [json!({}), Value::Null] {
            let original = pod(annotations, json!([{"name": "app", "image": "orders"}]));
            let result = patched(&review(&admission(original.clone()), &tls), &original);
            assert_eq!(result["metadata"]["annotations"][TOKEN_SERVER_CA], ca);
            assert_eq!(
                result["metadata"]["annotations"]["tokenmesh.dev/injected"],
                "true"
            );
            let sidecar = &result["spec"]["containers"][1];
            let ca_env = sidecar["env"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == "TOKENMESH_SIDECAR_TOKEN_SERVER_CA")
                .unwrap();
            assert_eq!(ca_env["value"], "/var/run/secrets/tokenmesh/ca.crt");
            assert_eq!(
                sidecar["volumeMounts"][0]["mountPath"],
                "/var/run/secrets/tokenmesh"
            );
            let sources = &result["spec"]["volumes"][0]["projected"]["sources"];
            assert_eq!(
                sources[1]["downwardAPI"]["items"][0],
                json!({"path": "ca.crt", "fieldRef": {"fieldPath": "metadata.annotations['tokenmesh.dev/token-server-ca']"}})
            );
        }
        // Plaintext: nothing of it.
        let original = pod(json!({}), json!([{"name": "app", "image": "orders"}]));
        let result = patched(&review(&admission(original.clone()), &config()), &original);
        assert!(
            result["metadata"]["annotations"]
                .get(TOKEN_SERVER_CA)
                .is_none()
        );
        let sources = result["spec"]["volumes"][0]["projected"]["sources"]
            .as_array()
            .unwrap();
        assert_eq!(sources.len(), 1);
    }

    #[test]
    fn capture_adds_the_init_container_with_only_net_admin_and_net_raw() {
        let capturing = InjectConfig {
            capture: true,
            capture_outbound: true,
            ..config()
        };
        let original = pod(
            json!({}),
            json!([{"name": "app", "image": "x", "ports": [{"containerPort": 8080}, {"containerPort": 9090}]}]),
        );
        let result = patched(&review(&admission(original.clone()), &capturing), &original);
        let init = &result["spec"]["initContainers"][0];
        assert_eq!(init["name"], "tokenmesh-capture");
        assert_eq!(init["command"], json!(["tokenmesh-capture", "install"]));
        assert_eq!(
            init["securityContext"]["capabilities"]["add"],
            json!(["NET_ADMIN", "NET_RAW"])
        );
        assert_eq!(
            init["securityContext"]["capabilities"]["drop"],
            json!(["ALL"])
        );
        assert_eq!(init["securityContext"]["allowPrivilegeEscalation"], false);
        let env: std::collections::HashMap<&str, &str> = init["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap(), e["value"].as_str().unwrap()))
            .collect();
        assert_eq!(env["TOKENMESH_CAPTURE_INBOUND_PORTS"], "8080,9090");
        assert_eq!(env["TOKENMESH_CAPTURE_OUTBOUND"], "true");
        assert_eq!(env["TOKENMESH_CAPTURE_SIDECAR_UID"], "1337");
        assert_eq!(
            env["TOKENMESH_CAPTURE_EXCLUDE_OUTBOUND_CIDRS"],
            "10.96.0.20/32"
        );
        assert!(
            result["spec"]["containers"][0].get("env").is_none(),
            "outbound captured: no HTTP_PROXY"
        );

        // Opted out of capture: explicit-proxy mode.
        let opted_out = pod(
            json!({"tokenmesh.dev/capture": "false"}),
            json!([{"name": "app", "image": "x"}]),
        );
        let result = patched(
            &review(&admission(opted_out.clone()), &capturing),
            &opted_out,
        );
        assert!(result["spec"].get("initContainers").is_none());
        assert_eq!(
            result["spec"]["containers"][0]["env"][0]["name"],
            "HTTP_PROXY"
        );
    }

    #[test]
    fn probes_of_captured_ports_move_to_the_sidecar_admin_port() {
        let capturing = InjectConfig {
            capture: true,
            ..config()
        };
        let get = |path: &str, port: Value| json!({"httpGet": {"path": path, "port": port, "httpHeaders": [{"name": "X-Probe", "value": "1"}, {"name": "Authorization", "value": "Basic eDp5"}]}});
        let original = pod(
            json!({"tokenmesh.dev/inbound-ports": "8080"}),
            json!([{
                "name": "web", "image": "x",
                "ports": [{"containerPort": 8080, "name": "http"}, {"containerPort": 9090, "name": "debug"}],
                "livenessProbe": get("/healthz", json!(8080)),
                "readinessProbe": get("ready?deep=1", json!("http")),
                "startupProbe": get("/started", json!("debug")),
            }]),
        );
        let result = patched(&review(&admission(original.clone()), &capturing), &original);
        let web = &result["spec"]["containers"][0];
        assert_eq!(
            web["livenessProbe"]["httpGet"],
            json!({"path": "/app-health/web/livez", "port": 15020, "scheme": "HTTP", "httpHeaders": [{"name": "X-Probe", "value": "1"}, {"name": "Authorization", "value": "Basic eDp5"}]})
        );
        assert_eq!(
            web["readinessProbe"]["httpGet"]["path"],
            "/app-health/web/readyz"
        );
        assert_eq!(
            web["startupProbe"], original["spec"]["containers"][0]["startupProbe"],
            "9090 is not captured: the probe reaches the application as before"
        );
        let sidecar_env = result["spec"]["containers"][1]["env"].as_array().unwrap();
        let probes = sidecar_env
            .iter()
            .find(|e| e["name"] == "TOKENMESH_SIDECAR_APP_PROBES")
            .unwrap();
        assert_eq!(
            probes["value"],
            "/app-health/web/livez=8080/healthz,/app-health/web/readyz=8080/ready?deep=1"
        );
        let headers = sidecar_env
            .iter()
            .find(|e| e["name"] == "TOKENMESH_SIDECAR_APP_PROBE_HEADERS")
            .unwrap();
        assert_eq!(
            headers["value"], "/app-health/web/livez=X-Probe,/app-health/web/readyz=X-Probe",
            "the sidecar passes on exactly the headers each moved probe names, credentials never"
        );

        // Without capture the application's ports are reachable: nothing moves.
        let result = patched(&review(&admission(original.clone()), &config()), &original);
        assert_eq!(
            result["spec"]["containers"][0]["livenessProbe"],
            original["spec"]["containers"][0]["livenessProbe"]
        );
    }

    #[test]
    fn the_sidecar_exports_its_spans_where_the_operator_says() {
        let sidecar_env = |config: &InjectConfig| {
            let original = pod(json!({}), json!([{"name": "app", "image": "orders"}]));
            let result = patched(&review(&admission(original.clone()), config), &original);
            result["spec"]["containers"][1]["env"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == "TOKENMESH_SIDECAR_OTLP_ENDPOINT")
                .map(|e| e["value"].clone())
        };
        assert_eq!(sidecar_env(&config()), None, "off by default");
        let tracing = InjectConfig {
            otlp_endpoint: Some("http://otel-collector.observability:4317".into()),
            ..config()
        };
        assert_eq!(
            sidecar_env(&tracing),
            Some(json!("http://otel-collector.observability:4317"))
        );
    }
}
