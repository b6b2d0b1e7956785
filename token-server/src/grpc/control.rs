//! ControlService: the operator applies, deletes and lists resources through
//! the same code path as `--config` files.

use std::sync::Arc;

use tokenmesh_proto::v1::{
    ApplyRequest, ApplyResponse, DeleteRequest, DeleteResponse, GetStatusRequest,
    GetStatusResponse, ListRequest, ListResponse, ResourceRef,
    control_service_server::ControlService,
};
use tonic::{Request, Response, Status, metadata::MetadataMap};

use crate::{
    config,
    keys::KeyError,
    registry::Registry,
    state::{AppState, StoredResources},
};

/// Largest resource document accepted.
const MAX_DOCUMENT: usize = 1024 * 1024;

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
    /// Only the admin credential may change the configuration.
    fn check_admin(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let Some(admin) = &self.state.admin else {
            return Err(Status::unauthenticated(
                "no admin credential is configured (--admin-token-file)",
            ));
        };
        let presented = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("send `authorization: Bearer <admin token>`"))?;
        if admin.matches(presented.trim().as_bytes()) {
            Ok(())
        } else {
            Err(Status::unauthenticated("wrong admin credential"))
        }
    }

    /// Validates `next`, stores the change (so every replica and restart has
    /// it), makes sure its keys exist, and puts it in force.
    async fn commit(
        &self,
        in_force: &mut StoredResources,
        current: &Registry,
        next: Registry,
        key: &str,
        document: &str,
    ) -> Result<u64, Status> {
        next.validate()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if next.server.issuer != current.server.issuer {
            return Err(Status::failed_precondition(
                "changing the issuer needs a restart of the token server",
            ));
        }
        crate::keys::check_readable(self.state.store.as_ref(), &next.server)
            .await
            .map_err(|e| match e {
                KeyError::Store(e) => Status::unavailable(format!("cannot read the keys: {e}")),
                other => Status::failed_precondition(format!("{other}; the change is not stored")),
            })?;
        self.state
            .store
            .put_resource(key, document)
            .await
            .map_err(|e| Status::unavailable(format!("cannot store the change: {e}")))?;
        let now = self.state.now();
        self.state
            .keys
            .refresh(
                self.state.store.as_ref(),
                &next.server,
                &next.algorithms_in_use(),
                now,
            )
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        self.state.registry.store(Arc::new(next));
        in_force.put(key, document);
        self.state.version.send_modify(|v| *v += 1);
        Ok(*self.state.version.borrow())
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
        if text.len() > MAX_DOCUMENT {
            return Err(Status::invalid_argument(
                "the document is larger than 1 MiB",
            ));
        }
        let mut docs = config::parse_documents(None, &text)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (Some(doc), None) = (docs.pop(), docs.pop()) else {
            return Err(Status::invalid_argument(
                "send exactly one resource document",
            ));
        };
        let mut in_force = self.state.changes.lock().await;
        let current = self.state.registry.load_full();
        let mut next = (*current).clone();
        next.apply(&doc, self.state.secrets.as_ref())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let key = format!("{}/{}", doc.resource.kind(), doc.origin.name);
        let version = self
            .commit(&mut in_force, &current, next, &key, &text)
            .await?;
        tracing::info!(kind = doc.resource.kind(), name = %doc.origin.name, version, "resource applied");
        Ok(Response::new(ApplyResponse {
            resource: Some(reference(doc.resource.kind(), &doc.origin.name)),
            version,
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
            .ok_or_else(|| Status::invalid_argument("resource is required"))?;
        let key = if resource.namespace.is_empty() {
            resource.name.clone()
        } else {
            format!("{}/{}", resource.namespace, resource.name)
        };
        let mut in_force = self.state.changes.lock().await;
        let current = self.state.registry.load_full();
        let mut next = (*current).clone();
        if !next.delete(&resource.kind, &key) {
            return Ok(Response::new(DeleteResponse {
                existed: false,
                version: *self.state.version.borrow(),
            }));
        }
        let stored_key = format!("{}/{key}", resource.kind);
        let version = self
            .commit(&mut in_force, &current, next, &stored_key, "")
            .await?;
        tracing::info!(kind = %resource.kind, name = %key, version, "resource deleted");
        Ok(Response::new(DeleteResponse {
            existed: true,
            version,
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
