//! TokenService: what sidecars ask of the token server.

use std::{sync::Arc, time::Duration};

use tokenmesh_crds::{ExchangeMode, TokenBinding};
use tokenmesh_proto::v1::{
    Binding, CheckShareRequest, CheckShareResponse, ExchangeRequest, ExchangeResponse,
    GetEmbeddedTokenRequest, GetEmbeddedTokenResponse, GetJwksRequest, GetJwksResponse,
    IntrospectRequest, IntrospectResponse, Mode, PolicySnapshot, RevocationEvent, Revoked, Route,
    WatchPoliciesRequest, WatchRevocationsRequest, revocation_event::Kind,
    token_service_server::TokenService,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, metadata::MetadataValue};

use tokenmesh_core::{
    OAuthError,
    binding::Holder,
    exchange::{self, ExchangeParams},
    introspection::introspection_response,
    issue::OPAQUE_PREFIX,
    policy,
    registry::Client,
};

use super::{authenticate, peer_certificate, status::Failure};
use crate::{
    keys,
    oauth::{active_claims, dpop},
    ports::sign,
    state::AppState,
    store::{Revocation, RevocationKind},
};

/// Revocations sent per store read.
const REVOCATION_BATCH: u32 = 256;
/// Revocations per snapshot event (about 60 bytes each, far below gRPC's
/// 4 MiB message limit).
const SNAPSHOT_PART: u32 = 4_096;
/// Other replicas' revocations are seen by polling at least this often.
const REVOCATION_POLL: Duration = Duration::from_secs(1);

pub struct Tokens {
    pub state: Arc<AppState>,
}

fn required<'a>(value: &'a str, name: &'static str) -> Result<&'a str, Failure> {
    if value.is_empty() {
        Err(Failure::Missing(name))
    } else {
        Ok(value)
    }
}

impl Tokens {
    async fn client<T>(&self, request: &Request<T>) -> Result<Arc<Client>, Failure> {
        let certificate = peer_certificate(request);
        Ok(authenticate(&self.state, request.metadata(), certificate.as_ref()).await?)
    }

    /// The DPoP proof in metadata `dpop`, for the token endpoint as over
    /// HTTP (`htm` POST, `htu` the token endpoint): gRPC is the same request.
    async fn holder<T>(
        &self,
        request: &Request<T>,
        require_nonce: bool,
    ) -> Result<Holder, Failure> {
        let values: Vec<&[u8]> = request
            .metadata()
            .get_all(dpop::DPOP_HEADER)
            .iter()
            .map(|value| value.as_encoded_bytes())
            .collect();
        Ok(dpop::holder_of(
            &self.state,
            &values,
            "POST",
            &self.state.endpoints.token,
            require_nonce,
        )
        .await?)
    }

    async fn exchange(
        &self,
        request: Request<ExchangeRequest>,
        require_nonce: bool,
    ) -> Result<ExchangeResponse, Failure> {
        let client = self.client(&request).await?;
        let certificate = peer_certificate(&request);
        let holder = self.holder(&request, require_nonce).await?;
        let body = request.into_inner();
        let registry = self.state.registry.load();
        let params = ExchangeParams {
            subject_token: required(&body.subject_token, "subject_token")?,
            actor_token: Some(body.actor_token.as_str()).filter(|t| !t.is_empty()),
            audience: Some(body.audience.as_str()).filter(|a| !a.is_empty()),
            scopes: Some(body.scopes).filter(|s| !s.is_empty()),
            requested_token_type: Some(body.requested_token_type.as_str()),
            certificate: certificate.as_ref(),
            holder,
        };
        let issued =
            exchange::exchange(&*self.state, &registry, &client, params, self.state.now()).await?;
        self.state
            .metrics
            .count_issued("token_exchange", issued.format);
        Ok(ExchangeResponse {
            access_token: issued.access_token,
            issued_token_type: issued.issued_token_type.to_owned(),
            expires_in: i64::try_from(issued.expires_in).unwrap_or(i64::MAX),
            scopes: issued.scopes,
        })
    }

    async fn introspect(
        &self,
        request: Request<IntrospectRequest>,
    ) -> Result<IntrospectResponse, Failure> {
        let client = self.client(&request).await?;
        if !client.allow_introspection {
            return Err(
                OAuthError::AccessDenied("the client may not introspect tokens".into()).into(),
            );
        }
        let token = request.into_inner().token;
        let Some(claims) = active_claims(&self.state, required(&token, "token")?).await? else {
            return Ok(IntrospectResponse::default());
        };
        let registry = self.state.registry.load();
        let response = introspection_response(&claims, self.state.now());
        let alg = keys::jose_algorithm(registry.server.algorithm);
        Ok(IntrospectResponse {
            active: true,
            claims_json: serde_json::to_string(&response).map_err(|_| OAuthError::Internal)?,
            phantom_jwt: sign(
                &self.state,
                alg,
                tokenmesh_tokens::claims::ACCESS_TOKEN_TYP,
                &claims,
            )?,
            expires_at: i64::try_from(claims.exp).unwrap_or(i64::MAX),
        })
    }

    async fn get_embedded_token(
        &self,
        request: Request<GetEmbeddedTokenRequest>,
    ) -> Result<GetEmbeddedTokenResponse, Failure> {
        let client = self.client(&request).await?;
        let body = request.into_inner();
        // A JWT shows its embedded tokens to anyone holding it; an opaque
        // token's are read from the store, as introspection would.
        if body.token.starts_with(OPAQUE_PREFIX) && !client.allow_introspection {
            return Err(OAuthError::AccessDenied(
                "the client may not introspect tokens, so not read an opaque token's embedded ones"
                    .into(),
            )
            .into());
        }
        let outer = active_claims(&self.state, required(&body.token, "token")?)
            .await?
            .ok_or_else(|| OAuthError::InvalidGrant("the token is not active".into()))?;
        let audience = required(&body.audience, "audience")?;
        // An embed policy's actors are the workloads that extract.
        if !policy::may_extract(&self.state.registry.load(), &outer, audience, &client.id) {
            return Err(OAuthError::AccessDenied(
                "no embed policy lets this client extract a token for this audience".into(),
            )
            .into());
        }
        let inner = outer
            .embedded_tokens
            .get(audience)
            .ok_or(Failure::NotEmbedded)?;
        if active_claims(&self.state, inner).await?.is_none() {
            return Err(
                OAuthError::InvalidGrant("the embedded token is no longer active".into()).into(),
            );
        }
        Ok(GetEmbeddedTokenResponse {
            token: inner.clone(),
        })
    }

    async fn check_share(
        &self,
        request: Request<CheckShareRequest>,
    ) -> Result<CheckShareResponse, Failure> {
        let caller = self.client(&request).await?;
        let body = request.into_inner();
        let Some(claims) = active_claims(&self.state, required(&body.token, "token")?).await?
        else {
            return Ok(CheckShareResponse {
                allowed: false,
                reason: "the token is not active".into(),
                audience: String::new(),
            });
        };
        let registry = self.state.registry.load();
        Ok(
            match policy::share(
                &registry,
                &claims,
                &caller.id,
                required(&body.destination, "destination")?,
            ) {
                Ok(audience) => CheckShareResponse {
                    allowed: true,
                    reason: String::new(),
                    audience,
                },
                Err(reason) => CheckShareResponse {
                    allowed: false,
                    reason: reason.into(),
                    audience: String::new(),
                },
            },
        )
    }
}

#[tonic::async_trait]
impl TokenService for Tokens {
    async fn exchange(
        &self,
        request: Request<ExchangeRequest>,
    ) -> Result<Response<ExchangeResponse>, Status> {
        let require_nonce = self.state.registry.load().server.dpop_nonce;
        let mut response = Response::new(Tokens::exchange(self, request, require_nonce).await?);
        if let Some(nonce) = dpop::fresh_nonce(&self.state, require_nonce)
            && let Ok(value) = MetadataValue::try_from(nonce)
        {
            response.metadata_mut().insert(dpop::NONCE_HEADER, value);
        }
        Ok(response)
    }

    async fn introspect(
        &self,
        request: Request<IntrospectRequest>,
    ) -> Result<Response<IntrospectResponse>, Status> {
        Ok(Response::new(Tokens::introspect(self, request).await?))
    }

    async fn get_embedded_token(
        &self,
        request: Request<GetEmbeddedTokenRequest>,
    ) -> Result<Response<GetEmbeddedTokenResponse>, Status> {
        Ok(Response::new(
            Tokens::get_embedded_token(self, request).await?,
        ))
    }

    async fn check_share(
        &self,
        request: Request<CheckShareRequest>,
    ) -> Result<Response<CheckShareResponse>, Status> {
        Ok(Response::new(Tokens::check_share(self, request).await?))
    }

    async fn get_jwks(
        &self,
        request: Request<GetJwksRequest>,
    ) -> Result<Response<GetJwksResponse>, Status> {
        self.client(&request).await?;
        Ok(Response::new(GetJwksResponse {
            issuer: self.state.registry.load().server.issuer.clone(),
            jwks_json: self.state.keys.snapshot().jwks_json.to_string(),
            token_endpoint: self.state.endpoints.token.clone(),
        }))
    }

    type WatchPoliciesStream = ReceiverStream<Result<PolicySnapshot, Status>>;

    async fn watch_policies(
        &self,
        request: Request<WatchPoliciesRequest>,
    ) -> Result<Response<Self::WatchPoliciesStream>, Status> {
        let client = self.client(&request).await?;
        let state = self.state.clone();
        let mut versions = state.version.subscribe();
        let (tx, rx) = mpsc::channel(4);
        tokenmesh_tokens::runtime::spawn(
            tracing::info_span!("policy stream", client_id = %client.id),
            async move {
                loop {
                    let version = *versions.borrow_and_update();
                    let routes = policy::routes(&state.registry.load(), &client.id);
                    let snapshot = PolicySnapshot {
                        version,
                        routes: routes.into_iter().map(route).collect(),
                    };
                    if tx.send(Ok(snapshot)).await.is_err() || versions.changed().await.is_err() {
                        return;
                    }
                }
            },
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type WatchRevocationsStream = ReceiverStream<Result<RevocationEvent, Status>>;

    async fn watch_revocations(
        &self,
        request: Request<WatchRevocationsRequest>,
    ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
        self.client(&request).await?;
        let request = request.into_inner();
        let mut cursor = request.after_seq.max(0);
        let snapshot = request.snapshot && cursor == 0;
        let state = self.state.clone();
        let (tx, rx) = mpsc::channel(REVOCATION_BATCH as usize);
        tokenmesh_tokens::runtime::spawn(tracing::info_span!("revocation stream"), async move {
            if snapshot {
                match send_snapshot(&state, &tx).await {
                    Some(last) => cursor = last,
                    None => return,
                }
            }
            loop {
                // Registered before the read, so a revocation in between still wakes us.
                let woken = state.revoked.notified();
                let batch = match state
                    .store
                    .revocations_after(cursor, REVOCATION_BATCH)
                    .await
                {
                    Ok(batch) => batch,
                    Err(err) => {
                        let _ = tx.send(Err(Failure::from(err).into())).await;
                        return;
                    }
                };
                let full = batch.len() == REVOCATION_BATCH as usize;
                for revocation in batch {
                    cursor = revocation.seq;
                    let revoked = revoked(revocation);
                    let event = RevocationEvent {
                        seq: cursor,
                        kind: revoked.kind,
                        id: revoked.id,
                        expires_at: revoked.expires_at,
                        snapshot: Vec::new(),
                    };
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                if !full {
                    tokio::select! {
                        () = woken => {}
                        () = tokio::time::sleep(REVOCATION_POLL) => {}
                        () = tx.closed() => return,
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Sends the revocations still in force as a few large events, so a starting
/// sidecar takes them in without one event (and one lock) per revocation
/// kept; `None` when the stream ended, else the cursor reached.
async fn send_snapshot(
    state: &AppState,
    tx: &mpsc::Sender<Result<RevocationEvent, Status>>,
) -> Option<i64> {
    let mut cursor = 0;
    loop {
        let batch = match state.store.revocations_after(cursor, SNAPSHOT_PART).await {
            Ok(batch) => batch,
            Err(err) => {
                let _ = tx.send(Err(Failure::from(err).into())).await;
                return None;
            }
        };
        let Some(last) = batch.last().map(|r| r.seq) else {
            return Some(cursor);
        };
        cursor = last;
        let full = batch.len() == SNAPSHOT_PART as usize;
        let now = state.now();
        let live: Vec<Revoked> = batch
            .into_iter()
            .filter(|r| r.expires_at >= now)
            .map(revoked)
            .collect();
        if !live.is_empty() {
            let part = RevocationEvent {
                seq: cursor,
                snapshot: live,
                ..Default::default()
            };
            tx.send(Ok(part)).await.ok()?;
        }
        if !full {
            return Some(cursor);
        }
    }
}

fn revoked(revocation: Revocation) -> Revoked {
    Revoked {
        kind: match revocation.kind {
            RevocationKind::Token => Kind::Token,
            RevocationKind::Grant => Kind::Grant,
        } as i32,
        id: revocation.id,
        expires_at: i64::try_from(revocation.expires_at).unwrap_or(i64::MAX),
    }
}

fn route(route: policy::Route) -> Route {
    let mode = match route.mode {
        ExchangeMode::Exchange => Mode::Exchange,
        ExchangeMode::Embed => Mode::Embed,
        ExchangeMode::Share => Mode::Share,
    };
    let binding = match route.binding {
        TokenBinding::None => Binding::None,
        TokenBinding::Dpop => Binding::Dpop,
        TokenBinding::Mtls => Binding::Mtls,
    };
    Route {
        host: route.host,
        audience: route.audience,
        mode: mode as i32,
        scopes: route.scopes,
        policy: route.policy,
        binding: binding as i32,
    }
}
