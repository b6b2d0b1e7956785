//! ControlService: the operator applies, deletes and lists resources through
//! the same code path as `--config` files.

use std::sync::Arc;

use tokenmesh_proto::v1::{
    ApplyRequest, ApplyResponse, DeleteRequest, DeleteResponse, GetStatusRequest,
    GetStatusResponse, ListRequest, ListResponse, ResourceHealth, ResourceRef,
    control_service_server::ControlService,
};
use tonic::{Request, Response, Status, metadata::MetadataMap};

use super::status::Failure;
use crate::{change::Change, state::AppState};

pub struct Control {
    pub state: Arc<AppState>,
}

fn reference(kind: &str, key: &str) -> ResourceRef {
    let (namespace, name) = key.split_once('/').unwrap_or(("", key));
    ResourceRef {
        kind: kind.to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}

impl Control {
    /// The applied resource's outside dependencies, checked: an oidc
    /// IdentityProvider's upstream discovery and keys.
    async fn health(&self, kind: &str, key: &str) -> Option<ResourceHealth> {
        if kind != "IdentityProvider" {
            return None;
        }
        let provider = self.state.registry.load().identity_provider(key)?.clone();
        let checked = crate::upstream::health(provider, self.state.clock.clone()).await?;
        Some(match checked {
            Ok(message) => ResourceHealth {
                ready: true,
                reason: "UpstreamReachable".into(),
                message,
            },
            Err(message) => {
                tracing::warn!(name = %key, error = %message, "identity provider upstream unavailable");
                ResourceHealth {
                    ready: false,
                    reason: "UpstreamUnavailable".into(),
                    message,
                }
            }
        })
    }

    /// Only the admin credential may change the configuration.
    fn check_admin(&self, metadata: &MetadataMap) -> Result<(), Failure> {
        let Some(admin) = &self.state.admin else {
            return Err(Failure::Unauthenticated(
                "no admin credential is configured (--admin-token-file)",
            ));
        };
        let presented = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(Failure::Unauthenticated(
                "send `authorization: Bearer <admin token>`",
            ))?;
        if admin.matches(presented.trim().as_bytes()) {
            Ok(())
        } else {
            Err(Failure::Unauthenticated("wrong admin credential"))
        }
    }
}

#[tonic::async_trait]
impl ControlService for Control {
    async fn apply(
        &self,
        request: Request<ApplyRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        self.check_admin(request.metadata())?;
        let text = request.into_inner().document;
        let applied = self
            .state
            .change(Change::Apply(&text))
            .await
            .map_err(Failure::from)?;
        tracing::info!(kind = %applied.kind, name = %applied.key, version = applied.version, "resource applied");
        Ok(Response::new(ApplyResponse {
            resource: Some(reference(&applied.kind, &applied.key)),
            version: applied.version,
            health: self.health(&applied.kind, &applied.key).await,
        }))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        self.check_admin(request.metadata())?;
        let resource = request
            .into_inner()
            .resource
            .ok_or(Failure::Missing("resource"))?;
        let key = if resource.namespace.is_empty() {
            resource.name.clone()
        } else {
            format!("{}/{}", resource.namespace, resource.name)
        };
        let applied = self
            .state
            .change(Change::Delete {
                kind: &resource.kind,
                key: &key,
            })
            .await
            .map_err(Failure::from)?;
        if applied.existed {
            tracing::info!(kind = %resource.kind, name = %key, version = applied.version, "resource deleted");
        }
        Ok(Response::new(DeleteResponse {
            existed: applied.existed,
            version: applied.version,
        }))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        self.check_admin(request.metadata())?;
        let kind = request.into_inner().kind;
        let registry = self.state.registry.load();
        let resources = registry
            .list(Some(kind.as_str()).filter(|k| !k.is_empty()))
            .into_iter()
            .map(|(kind, key)| reference(kind, &key))
            .collect();
        Ok(Response::new(ListResponse {
            resources,
            version: *self.state.version.borrow(),
        }))
    }

    async fn get_status(
        &self,
        request: Request<GetStatusRequest>,
    ) -> Result<Response<GetStatusResponse>, Status> {
        self.check_admin(request.metadata())?;
        let registry = self.state.registry.load();
        let (ready, message) = match self.state.store.ping().await {
            Ok(()) => (true, registry.summary()),
            Err(err) => (false, err.to_string()),
        };
        Ok(Response::new(GetStatusResponse {
            ready,
            message,
            version: *self.state.version.borrow(),
            issuer: registry.server.issuer.clone(),
        }))
    }
}
