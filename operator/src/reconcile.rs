//! The controllers: apply each resource into the token server through
//! ControlService, behind a finalizer that removes it again; status, events,
//! generated client secrets, requeue with backoff, periodic resync.

use std::{
    collections::HashMap,
    fmt::Debug,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event, EventType, Recorder},
        finalizer::{Event as Finalizer, finalizer},
    },
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;
use tokenmesh_crds::{
    ExchangePolicy, IdentityProvider, OAuthClient, ResourceStatus, Scope, SecretKeyRef, TokenServer,
};
use tokenmesh_tokens::clock::SharedClock;

use crate::{control, control::Control, desired, metrics::Metrics, secrets};

pub const FINALIZER: &str = "tokenmesh.dev/token-server";
/// How soon a resource whose outside dependency is down is checked again.
const UNHEALTHY_RECHECK: Duration = Duration::from_secs(30);
const MANAGER: &str = "tokenmesh-operator";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {}", kube_message(.0))]
    Kube(#[from] kube::Error),
    #[error("token server: {}", .0.message())]
    TokenServer(#[from] tonic::Status),
    #[error("finalizer: {0}")]
    Finalizer(String),
    #[error("cannot build the document: {0}")]
    Document(#[from] serde_json::Error),
    #[error("secret {0}: {1}")]
    Secret(String, String),
    #[error(
        "{field} names the Secret `{name}` (key `{key}`), which does not exist in this namespace"
    )]
    SecretMissing {
        field: &'static str,
        name: String,
        key: String,
    },
    #[error("the Secret `{name}` has no key `{key}`, or its value is empty ({field} names it)")]
    SecretKeyMissing {
        field: &'static str,
        name: String,
        key: String,
    },
    #[error(
        "a Secret `{0}` exists that the operator did not create for this resource; it is left untouched (delete it, or rename the resource)"
    )]
    SecretConflict(String),
    #[error("{0}")]
    Rejected(String),
}

/// The API server's own message, not the Debug dump of its answer.
fn kube_message(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.reason),
        other => other.to_string(),
    }
}

impl Error {
    /// The metric label of this error.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::TokenServer(_) => "token_server",
            Self::Finalizer(_) => "finalizer",
            Self::Document(_) => "document",
            Self::Secret(..) | Self::SecretMissing { .. } | Self::SecretKeyMissing { .. } => {
                "secret"
            }
            Self::SecretConflict(_) => "secret_conflict",
            Self::Rejected(_) => "rejected",
        }
    }

    /// Whether the Secret a `secretRef` names, or its key, is gone.
    pub fn secret_gone(&self) -> bool {
        matches!(
            self,
            Self::SecretMissing { .. } | Self::SecretKeyMissing { .. }
        )
    }

    /// The reason of the `Ready=False` condition and of the Warning event.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TokenServer(status) => control::reason(status),
            Self::Secret(..) | Self::SecretMissing { .. } | Self::SecretKeyMissing { .. } => {
                "SecretUnavailable"
            }
            Self::SecretConflict(_) => "SecretConflict",
            Self::Rejected(_) => "Rejected",
            _ => "Error",
        }
    }
}

pub struct Context {
    pub client: Client,
    pub control: Control,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub resync: Duration,
    pub secret_grace: Duration,
    /// Where reconcile reads the time: secret grace periods, key rotation,
    /// condition times, reconcile durations.
    pub clock: SharedClock,
    /// Consecutive failures per object, for the backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        control: Control,
        recorder: Recorder,
        resync: Duration,
        secret_grace: Duration,
        clock: SharedClock,
    ) -> Self {
        Self {
            client,
            control,
            recorder,
            metrics: Metrics::new(),
            resync,
            secret_grace,
            clock,
            failures: Mutex::default(),
        }
    }

    fn failed(&self, key: &str) -> u32 {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let count = failures.entry(key.to_owned()).or_default();
        *count = count.saturating_add(1);
        *count
    }

    fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// 2 s doubling to 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(2u64.saturating_pow(failures.min(9))).min(Duration::from_secs(300))
}

fn key<K: Resource<DynamicType = ()>>(object: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

/// What every kind of resource needs from the controller.
pub trait Managed:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    fn status(&self) -> Option<&ResourceStatus>;

    /// Why the token server would refuse this resource, found before any
    /// call: nothing is written for it.
    fn check(&self) -> Result<(), String> {
        Ok(())
    }

    /// The client id to report in status (`kubectl get` shows it).
    fn status_client_id(&self) -> Option<String> {
        None
    }

    /// The Secret of its own namespace this resource reads (`secretRef`).
    fn secret_ref(&self) -> Option<&str> {
        None
    }
}

macro_rules! managed {
    ($($kind:ty),*) => {$(
        impl Managed for $kind {
            fn status(&self) -> Option<&ResourceStatus> {
                self.status.as_ref()
            }
        }
    )*};
}
managed!(Scope, ExchangePolicy, TokenServer);

impl Managed for IdentityProvider {
    fn status(&self) -> Option<&ResourceStatus> {
        self.status.as_ref()
    }

    fn secret_ref(&self) -> Option<&str> {
        desired::provider_secret_ref(self).map(|(_, r)| r.name.as_str())
    }
}

impl Managed for OAuthClient {
    fn status(&self) -> Option<&ResourceStatus> {
        self.status.as_ref().map(|s| &s.common)
    }

    fn check(&self) -> Result<(), String> {
        tokenmesh_crds::check_client_id(self.metadata.namespace.as_deref(), &self.client_id())
            .map_err(|why| format!("spec.clientId: {why}"))
    }

    fn status_client_id(&self) -> Option<String> {
        Some(self.client_id())
    }

    fn secret_ref(&self) -> Option<&str> {
        let reference = self.spec.authentication.secret_ref.as_ref()?;
        Some(reference.name.as_str())
    }
}

async fn patch_status<K: Managed>(
    ctx: &Context,
    object: &K,
    status: ResourceStatus,
) -> Result<(), kube::Error> {
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &object.namespace().unwrap_or_default());
    let mut patch =
        json!({"apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status});
    if let Some(id) = object.status_client_id() {
        patch["status"]["clientId"] = id.into();
    }
    api.patch_status(
        &object.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await?;
    Ok(())
}

async fn event<K: Managed>(
    ctx: &Context,
    object: &K,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(err) = ctx.recorder.publish(&event, &object.object_ref(&())).await {
        tracing::warn!(error = %err, "cannot publish an event");
    }
}

/// The value a `secretRef` (at `field`) names in `namespace`.
async fn referenced_secret(
    ctx: &Context,
    namespace: &str,
    field: &'static str,
    reference: &SecretKeyRef,
) -> Result<Vec<u8>, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let (name, key) = (reference.name.clone(), reference.key.clone());
    let Some(secret) = secrets.get_opt(&reference.name).await? else {
        return Err(Error::SecretMissing { field, name, key });
    };
    secrets::value(&secret, &reference.key).ok_or(Error::SecretKeyMissing { field, name, key })
}

/// The document for a resource; for an OAuthClient with a secret method,
/// its secrets (generated, rotated or referenced) as digests; for an
/// IdentityProvider, the users or client secret its Secret holds, inline.
async fn document_of<K: Managed>(
    ctx: &Context,
    object: &K,
) -> Result<(String, Option<u64>), Error> {
    let any = object as &dyn std::any::Any;
    if let Some(provider) = any.downcast_ref::<IdentityProvider>() {
        let Some((field, reference)) = desired::provider_secret_ref(provider) else {
            return Ok((desired::document(provider)?, None));
        };
        let namespace = provider.namespace().unwrap_or_default();
        let value = referenced_secret(ctx, &namespace, field, reference).await?;
        let document = desired::provider_document(provider, &value)
            .map_err(|why| Error::Secret(reference.name.clone(), why))?;
        return Ok((document, None));
    }
    let Some(client) = any.downcast_ref::<OAuthClient>() else {
        return Ok((desired::document(object)?, None));
    };
    if !desired::uses_secret(client) {
        return Ok((desired::document(client)?, None));
    }
    let namespace = client.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    if let Some(reference) = &client.spec.authentication.secret_ref {
        const FIELD: &str = "spec.authentication.secretRef";
        let value = referenced_secret(ctx, &namespace, FIELD, reference).await?;
        return Ok((desired::client_document(client, &[value])?, None));
    }
    let name = secrets::secret_name(client);
    let existing = secrets.get_opt(&name).await?;
    if let Some(secret) = &existing
        && !secrets::created_for(secret, client)
    {
        return Err(Error::SecretConflict(name));
    }
    let fresh = || tokenmesh_tokens::secret::random_token().unwrap_or_default();
    let plan = secrets::plan(
        client,
        existing.as_ref(),
        ctx.clock.unix(),
        ctx.secret_grace.as_secs(),
        fresh,
    );
    if plan.accepted.iter().any(Vec::is_empty) {
        return Err(Error::Secret(name, "no randomness to generate it".into()));
    }
    if let Some(secret) = &plan.write {
        secrets
            .patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(secret),
            )
            .await?;
        let note = if existing.is_some() {
            "client secret rotated"
        } else {
            "client secret generated"
        };
        event(
            ctx,
            client,
            EventType::Normal,
            "SecretWritten",
            format!("{note} into Secret {name}"),
        )
        .await;
    }
    Ok((
        desired::client_document(client, &plan.accepted)?,
        plan.grace_ends,
    ))
}

async fn apply<K: Managed>(object: Arc<K>, ctx: &Context) -> Result<Action, Error> {
    let generation = object.meta().generation;
    let outcome = async {
        object.check().map_err(Error::Rejected)?;
        let (document, grace_ends) = document_of(ctx, object.as_ref()).await?;
        let (_, health) = ctx.control.apply(document).await?;
        Ok::<_, Error>((grace_ends, health.filter(|h| !h.ready)))
    }
    .await;
    match outcome {
        Ok((_, Some(unhealthy))) => {
            // In force, but what it depends on outside (an upstream OpenID
            // Provider) cannot be reached: not Ready, and checked again soon.
            let status = desired::status(
                object.status(),
                generation,
                Err((&unhealthy.reason, unhealthy.message.clone())),
                ctx.clock.now(),
            );
            patch_status(ctx, object.as_ref(), status).await?;
            event(
                ctx,
                object.as_ref(),
                EventType::Warning,
                &unhealthy.reason,
                unhealthy.message,
            )
            .await;
            Ok(Action::requeue(UNHEALTHY_RECHECK.min(ctx.resync)))
        }
        Ok((grace_ends, None)) => {
            let was_ready = object.status().is_some_and(|s| {
                s.observed_generation == generation
                    && s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
            });
            patch_status(
                ctx,
                object.as_ref(),
                desired::status(object.status(), generation, Ok(()), ctx.clock.now()),
            )
            .await?;
            if !was_ready {
                event(
                    ctx,
                    object.as_ref(),
                    EventType::Normal,
                    "Applied",
                    "applied to the token server".into(),
                )
                .await;
            }
            // Come back when a rotated secret's grace ends, else at the resync.
            let requeue = grace_ends
                .map_or(ctx.resync, |until| {
                    Duration::from_secs(until.saturating_sub(ctx.clock.unix()) + 1)
                })
                .min(ctx.resync);
            Ok(Action::requeue(requeue))
        }
        Err(err) => {
            if err.secret_gone() {
                forget(ctx, object.as_ref()).await;
            }
            report(ctx, object.as_ref(), &err).await;
            Err(err)
        }
    }
}

/// Removes a client from the token server while the Secret its `secretRef`
/// names is gone: otherwise the last value pushed would keep working, and
/// deleting the Secret is how an owner cuts a leaked secret off. It comes
/// back with the Secret (the Secret watch reconciles it at once).
async fn forget<K: Managed>(ctx: &Context, object: &K) {
    let namespace = object.namespace().unwrap_or_default();
    match ctx
        .control
        .delete(&K::kind(&()), &namespace, &object.name_any())
        .await
    {
        Ok(_) => tracing::info!(
            name = %object.name_any(),
            %namespace,
            "removed from the token server until its Secret is back"
        ),
        Err(status) => tracing::warn!(
            name = %object.name_any(),
            %namespace,
            error = %status.message(),
            "cannot remove it from the token server while its Secret is gone"
        ),
    }
}

/// `Ready=False` with the error's reason and message, and a Warning event.
async fn report<K: Managed>(ctx: &Context, object: &K, err: &Error) {
    let reason = err.reason();
    let status = desired::status(
        object.status(),
        object.meta().generation,
        Err((reason, err.to_string())),
        ctx.clock.now(),
    );
    if let Err(patch) = patch_status(ctx, object, status).await {
        tracing::warn!(error = %patch, "cannot write the status");
    }
    event(ctx, object, EventType::Warning, reason, err.to_string()).await;
}

async fn cleanup<K: Managed>(object: Arc<K>, ctx: &Context) -> Result<Action, Error> {
    let namespace = object.namespace().unwrap_or_default();
    match ctx
        .control
        .delete(&K::kind(&()), &namespace, &object.name_any())
        .await
    {
        Ok(_) => {
            event(
                ctx,
                object.as_ref(),
                EventType::Normal,
                "Removed",
                "removed from the token server".into(),
            )
            .await;
            Ok(Action::await_change())
        }
        Err(status) => {
            // The resource stays (finalizer) and says why.
            let reason = match status.code() {
                tonic::Code::InvalidArgument => "DeletionBlocked",
                _ => control::reason(&status),
            };
            let message = format!(
                "cannot remove it from the token server yet: {}",
                status.message()
            );
            let status_patch = desired::status(
                object.status(),
                object.meta().generation,
                Err((reason, message.clone())),
                ctx.clock.now(),
            );
            if let Err(err) = patch_status(ctx, object.as_ref(), status_patch).await {
                tracing::warn!(error = %err, "cannot write the status");
            }
            event(ctx, object.as_ref(), EventType::Warning, reason, message).await;
            Err(Error::TokenServer(status))
        }
    }
}

/// The reconcile function of every controller.
pub async fn reconcile<K: Managed>(object: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &object.namespace().unwrap_or_default());
    let key = key(object.as_ref());
    let started = ctx.clock.instant();
    let result = finalizer(&api, FINALIZER, object, |event| async {
        match event {
            Finalizer::Apply(object) => apply(object, &ctx).await,
            Finalizer::Cleanup(object) => cleanup(object, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(err)
        | kube::runtime::finalizer::Error::CleanupFailed(err) => err,
        other => Error::Finalizer(other.to_string()),
    });
    let kind = K::kind(&()).into_owned();
    ctx.metrics.observe(
        &kind,
        result.as_ref().err().map(Error::label),
        ctx.clock.instant().saturating_duration_since(started),
    );
    if result.is_ok() {
        ctx.succeeded(&key);
    }
    result
}

/// The TokenServer controller: keeps its signing-key Secret rotated (the
/// token server itself is configured from its files, not through here).
pub async fn reconcile_keys(server: Arc<TokenServer>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = server.namespace().unwrap_or_default();
    let name = crate::signing::secret_name(&server);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let existing = secrets.get_opt(&name).await?;
    if let Some(secret) = &existing
        && !secrets::created_for(secret, server.as_ref())
    {
        let err = Error::SecretConflict(name);
        report(&ctx, server.as_ref(), &err).await;
        return Err(err);
    }
    let mut data: std::collections::BTreeMap<String, Vec<u8>> = existing
        .as_ref()
        .and_then(|s| s.data.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    let (period, max_ttl) = crate::signing::periods(&server);
    let now = ctx.clock.unix();
    let names: Vec<String> = data.keys().cloned().collect();
    let plan = crate::signing::plan(&names, now, period, max_ttl);
    if !plan.add.is_empty() || !plan.remove.is_empty() {
        crate::signing::apply(&mut data, &plan, server.spec.signing.algorithm)
            .map_err(|e| Error::Secret(name.clone(), e))?;
        let secret = Secret {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                owner_references: server.controller_owner_ref(&()).map(|o| vec![o]),
                labels: Some(
                    [(
                        "app.kubernetes.io/managed-by".to_owned(),
                        MANAGER.to_owned(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(
                data.into_iter()
                    .map(|(k, v)| (k, k8s_openapi::ByteString(v)))
                    .collect(),
            ),
            ..Default::default()
        };
        secrets
            .patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await?;
        let note = format!(
            "signing keys: {} added, {} removed, in Secret {name}",
            plan.add.len(),
            plan.remove.len()
        );
        event(
            &ctx,
            server.as_ref(),
            EventType::Normal,
            "KeysRotated",
            note,
        )
        .await;
    }
    patch_status(
        &ctx,
        server.as_ref(),
        desired::status(
            server.status(),
            server.meta().generation,
            Ok(()),
            ctx.clock.now(),
        ),
    )
    .await?;
    let wait = Duration::from_secs(plan.next_change.saturating_sub(now).max(1)).min(ctx.resync);
    Ok(Action::requeue(wait))
}

/// Requeue with backoff while the token server (or anything) fails.
pub fn error_policy<K: Managed>(object: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx.failed(&key(object.as_ref()));
    let delay = backoff(failures);
    tracing::warn!(resource = %key(object.as_ref()), %error, failures, ?delay, "reconcile failed");
    Action::requeue(delay)
}

#[cfg(test)]
mod by_kind;
#[cfg(test)]
mod identity_providers;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_bounded() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(2), Duration::from_secs(4));
        assert_eq!(backoff(8), Duration::from_secs(256));
        assert_eq!(backoff(9), Duration::from_secs(300));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(300));
    }
}

#[cfg(test)]
mod api_tests {
    use http::Method;
    use serde_json::json;

    use super::*;
    use crate::fixtures::{
        GATEWAY, SCOPE, as_json, context, expect, expect_event, expect_status, foreign_secret,
        not_found, oauth_client, scope, with_secret_ref,
    };
    use tokenmesh_crds::{AuthMethod, ClientAuthentication, OAuthClient, OAuthClientSpec};

    fn unreachable_token_server() -> Control {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Control::new(&format!("http://127.0.0.1:{port}"), "admin", None).unwrap()
    }

    #[tokio::test]
    async fn a_new_resource_gets_the_finalizer_first() {
        let (ctx, mut api) = context(unreachable_token_server());
        let task = tokio::spawn(reconcile(Arc::new(scope(false)), ctx));
        let patch = expect(&mut api, Method::PATCH, SCOPE, as_json(&scope(true))).await;
        assert!(patch.to_string().contains(FINALIZER), "{patch}");
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_token_server_that_is_down_is_reported_in_status_and_events_and_retried() {
        let (ctx, mut api) = context(unreachable_token_server());
        let task = tokio::spawn(reconcile(Arc::new(scope(true)), ctx.clone()));
        let status = expect(
            &mut api,
            Method::PATCH,
            &format!("{SCOPE}/status"),
            as_json(&scope(true)),
        )
        .await;
        let ready = &status["status"]["conditions"][0];
        assert_eq!(ready["type"], "Ready");
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["reason"], "TokenServerUnavailable");
        assert_eq!(status["status"]["observedGeneration"], 2);
        let event = expect_event(&mut api, "shop").await;
        assert_eq!(event["type"], "Warning");
        assert_eq!(event["reason"], "TokenServerUnavailable");
        let err = task.await.unwrap().unwrap_err();
        assert_eq!(err.label(), "token_server");
        // The error policy backs off, more with every failure.
        let first = error_policy(Arc::new(scope(true)), &err, ctx.clone());
        let second = error_policy(Arc::new(scope(true)), &err, ctx);
        assert_eq!(first, Action::requeue(Duration::from_secs(2)));
        assert_eq!(second, Action::requeue(Duration::from_secs(4)));
    }

    #[tokio::test]
    async fn deleting_asks_the_token_server_and_keeps_the_finalizer_when_it_cannot() {
        let (ctx, mut api) = context(unreachable_token_server());
        let mut deleting = scope(true);
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        let task = tokio::spawn(reconcile(Arc::new(deleting.clone()), ctx));
        let status = expect(
            &mut api,
            Method::PATCH,
            &format!("{SCOPE}/status"),
            as_json(&deleting),
        )
        .await;
        assert!(
            status["status"]["conditions"][0]["message"]
                .as_str()
                .unwrap()
                .contains("cannot remove it")
        );
        expect_event(&mut api, "shop").await;
        // No call removes the finalizer: it stays until the token server agrees.
        assert!(task.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn a_client_without_a_secret_gets_one_generated_into_a_secret_it_owns() {
        let (ctx, mut api) = context(unreachable_token_server());
        let mut client = OAuthClient::new(
            "gateway",
            OAuthClientSpec {
                audiences: vec!["orders".into()],
                ..Default::default()
            },
        );
        client.metadata.namespace = Some("shop".into());
        client.metadata.uid = Some("uid-9".into());
        client.metadata.finalizers = Some(vec![FINALIZER.into()]);
        let task = tokio::spawn(reconcile(Arc::new(client.clone()), ctx));
        let secret_path = "/api/v1/namespaces/shop/secrets/gateway-client-secret";
        expect_status(&mut api, Method::GET, secret_path, 404, not_found()).await;
        let written = expect(&mut api, Method::PATCH, secret_path, json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "gateway-client-secret"}})).await;
        assert_eq!(written["metadata"]["ownerReferences"][0]["uid"], "uid-9");
        assert_eq!(
            written["metadata"]["ownerReferences"][0]["kind"],
            "OAuthClient"
        );
        let secret = written["data"]["client_secret"].as_str().unwrap();
        assert!(secret.len() >= 40, "≥ 256 bits, base64");
        let event = expect_event(&mut api, "shop").await;
        assert_eq!(event["reason"], "SecretWritten");
        // The token server is down: reported, and nothing else is written.
        let status = expect(
            &mut api,
            Method::PATCH,
            "/apis/tokenmesh.dev/v1alpha1/namespaces/shop/oauthclients/gateway/status",
            json!(client),
        )
        .await;
        assert_eq!(
            status["status"]["conditions"][0]["reason"],
            "TokenServerUnavailable"
        );
        expect_event(&mut api, "shop").await;
        assert!(task.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn a_token_server_gets_a_signing_key_secret_with_the_current_and_next_key() {
        let (ctx, mut api) = context(unreachable_token_server());
        let mut server = TokenServer::new("default", Default::default());
        server.metadata.namespace = Some("tokenmesh".into());
        server.metadata.uid = Some("uid-ts".into());
        let task = tokio::spawn(reconcile_keys(Arc::new(server.clone()), ctx));
        let path = "/api/v1/namespaces/tokenmesh/secrets/default-signing-keys";
        expect_status(&mut api, Method::GET, path, 404, not_found()).await;
        let written = expect(&mut api, Method::PATCH, path, json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "default-signing-keys"}})).await;
        let entries: Vec<&String> = written["data"].as_object().unwrap().keys().collect();
        assert_eq!(entries.len(), 2, "{entries:?}");
        assert_eq!(written["metadata"]["ownerReferences"][0]["uid"], "uid-ts");
        let event = expect_event(&mut api, "tokenmesh").await;
        assert_eq!(event["reason"], "KeysRotated");
        let status = expect(
            &mut api,
            Method::PATCH,
            "/apis/tokenmesh.dev/v1alpha1/namespaces/tokenmesh/tokenservers/default/status",
            json!(server),
        )
        .await;
        assert_eq!(status["status"]["conditions"][0]["status"], "True");
        let action = task.await.unwrap().unwrap();
        assert_eq!(
            action,
            Action::requeue(Duration::from_secs(300)),
            "the resync bounds the wait for the next key"
        );
    }

    /// A fake token server that speaks the real ControlService API and agrees to everything.
    async fn agreeable_token_server() -> Control {
        crate::fixtures::FakeTokenServer::start().await.1
    }

    #[tokio::test]
    async fn applied_resources_become_ready_and_deleted_ones_lose_their_finalizer() {
        let (ctx, mut api) = context(agreeable_token_server().await);
        let task = tokio::spawn(reconcile(Arc::new(scope(true)), ctx.clone()));
        let status = expect(
            &mut api,
            Method::PATCH,
            &format!("{SCOPE}/status"),
            as_json(&scope(true)),
        )
        .await;
        assert_eq!(status["status"]["conditions"][0]["status"], "True");
        assert_eq!(status["status"]["conditions"][0]["reason"], "Applied");
        assert_eq!(expect_event(&mut api, "shop").await["reason"], "Applied");
        assert_eq!(
            task.await.unwrap().unwrap(),
            Action::requeue(Duration::from_secs(300)),
            "resync"
        );

        let mut deleting = scope(true);
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        let task = tokio::spawn(reconcile(Arc::new(deleting.clone()), ctx));
        assert_eq!(expect_event(&mut api, "shop").await["reason"], "Removed");
        let patch = expect(&mut api, Method::PATCH, SCOPE, as_json(&scope(false))).await;
        assert!(patch.to_string().contains("finalizers"), "{patch}");
        task.await.unwrap().unwrap();
    }

    /// Answers the GET of `secret` with one someone else made, then expects
    /// `Ready=False/SecretConflict` naming it, and the Warning event.
    async fn expect_conflict(
        api: &mut crate::fixtures::ApiServer,
        namespace: &str,
        secret: &str,
        status_path: &str,
        object: serde_json::Value,
    ) {
        let path = format!("/api/v1/namespaces/{namespace}/secrets/{secret}");
        expect(api, Method::GET, &path, foreign_secret(namespace, secret)).await;
        let status = expect(api, Method::PATCH, status_path, object).await;
        let ready = &status["status"]["conditions"][0];
        assert_eq!(
            (ready["status"].as_str(), ready["reason"].as_str()),
            (Some("False"), Some("SecretConflict"))
        );
        let message = ready["message"].as_str().unwrap();
        assert!(message.contains(&format!("`{secret}`")), "{message}");
        let event = expect_event(api, namespace).await;
        assert_eq!(event["reason"], "SecretConflict");
    }

    #[tokio::test]
    async fn a_client_id_of_another_namespace_is_rejected_before_anything_is_written() {
        let (ctx, mut api) = context(unreachable_token_server());
        let squatter = oauth_client(
            "evil",
            "innocent",
            OAuthClientSpec {
                client_id: Some("shop/orders".into()),
                audiences: vec!["orders".into()],
                ..Default::default()
            },
        );
        let task = tokio::spawn(reconcile(Arc::new(squatter.clone()), ctx));
        // No Secret is read or generated, nothing reaches the token server.
        let status = expect(
            &mut api,
            Method::PATCH,
            "/apis/tokenmesh.dev/v1alpha1/namespaces/evil/oauthclients/innocent/status",
            json!(squatter),
        )
        .await;
        let ready = &status["status"]["conditions"][0];
        assert_eq!(
            (ready["status"].as_str(), ready["reason"].as_str()),
            (Some("False"), Some("Rejected"))
        );
        let message = ready["message"].as_str().unwrap();
        assert!(
            message.contains("spec.clientId") && message.contains("`evil/`"),
            "{message}"
        );
        assert_eq!(status["status"]["clientId"], "shop/orders");
        assert_eq!(expect_event(&mut api, "evil").await["reason"], "Rejected");
        assert_eq!(task.await.unwrap().unwrap_err().label(), "rejected");
    }

    #[tokio::test]
    async fn a_missing_referenced_secret_is_reported_by_name_and_key_in_words() {
        let (ctx, mut api) = context(unreachable_token_server());
        let client = oauth_client("shop", "gateway", with_secret_ref());
        let secret = "/api/v1/namespaces/shop/secrets/gateway-oauth";

        let task = tokio::spawn(reconcile(Arc::new(client.clone()), ctx));
        expect_status(&mut api, Method::GET, secret, 404, not_found()).await;
        let status = expect(
            &mut api,
            Method::PATCH,
            &format!("{GATEWAY}/status"),
            json!(client),
        )
        .await;
        let ready = &status["status"]["conditions"][0];
        assert_eq!(ready["reason"], "SecretUnavailable");
        assert_eq!(
            ready["message"],
            "spec.authentication.secretRef names the Secret `gateway-oauth` (key `client_secret`), which does not exist in this namespace"
        );
        assert_eq!(
            expect_event(&mut api, "shop").await["reason"],
            "SecretUnavailable"
        );
        assert_eq!(task.await.unwrap().unwrap_err().label(), "secret");

        // The Secret is there, the key is not. (A fresh context: the
        // recorder would fold a second event of the same reason into the first.)
        let (ctx, mut api) = context(unreachable_token_server());
        let task = tokio::spawn(reconcile(Arc::new(client.clone()), ctx));
        let mut other_key = foreign_secret("shop", "gateway-oauth");
        other_key["data"] = json!({"password": "eA=="});
        expect(&mut api, Method::GET, secret, other_key).await;
        let status = expect(
            &mut api,
            Method::PATCH,
            &format!("{GATEWAY}/status"),
            json!(client),
        )
        .await;
        let ready = &status["status"]["conditions"][0];
        assert_eq!(ready["reason"], "SecretUnavailable");
        let message = ready["message"].as_str().unwrap();
        assert!(
            message.contains("`gateway-oauth` has no key `client_secret`"),
            "{message}"
        );
        expect_event(&mut api, "shop").await;
        assert!(task.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn a_secret_of_the_generated_name_that_the_operator_did_not_create_is_left_alone() {
        let (ctx, mut api) = context(unreachable_token_server());
        let client = oauth_client(
            "shop",
            "gateway",
            OAuthClientSpec {
                audiences: vec!["orders".into()],
                ..Default::default()
            },
        );
        let task = tokio::spawn(reconcile(Arc::new(client.clone()), ctx));
        // Next comes the status: the Secret is neither written nor used.
        expect_conflict(
            &mut api,
            "shop",
            "gateway-client-secret",
            &format!("{GATEWAY}/status"),
            json!(client),
        )
        .await;
        assert_eq!(task.await.unwrap().unwrap_err().label(), "secret_conflict");
    }

    #[tokio::test]
    async fn a_signing_key_secret_the_operator_did_not_create_is_left_alone() {
        let (ctx, mut api) = context(unreachable_token_server());
        let mut server = TokenServer::new("default", Default::default());
        server.metadata.namespace = Some("tokenmesh".into());
        server.metadata.uid = Some("uid-ts".into());
        let task = tokio::spawn(reconcile_keys(Arc::new(server.clone()), ctx));
        expect_conflict(
            &mut api,
            "tokenmesh",
            "default-signing-keys",
            "/apis/tokenmesh.dev/v1alpha1/namespaces/tokenmesh/tokenservers/default/status",
            json!(server),
        )
        .await;
        assert!(task.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn a_client_reports_its_effective_client_id_in_status() {
        let (ctx, mut api) = context(agreeable_token_server().await);
        let client = oauth_client(
            "shop",
            "gateway",
            OAuthClientSpec {
                authentication: ClientAuthentication {
                    method: AuthMethod::None,
                    ..Default::default()
                },
                audiences: vec!["orders".into()],
                ..Default::default()
            },
        );
        let task = tokio::spawn(reconcile(Arc::new(client.clone()), ctx));
        let status = expect(
            &mut api,
            Method::PATCH,
            &format!("{GATEWAY}/status"),
            json!(client),
        )
        .await;
        assert_eq!(status["status"]["conditions"][0]["reason"], "Applied");
        assert_eq!(
            status["status"]["clientId"], "shop/gateway",
            "the default id"
        );
        expect_event(&mut api, "shop").await;
        task.await.unwrap().unwrap();
    }
}
