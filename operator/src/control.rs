//! The token server's ControlService, called with the admin credential.

use std::time::Duration;

use tokenmesh_proto::v1::{
    ApplyRequest, DeleteRequest, GetStatusRequest, ResourceHealth, ResourceRef,
    control_service_client::ControlServiceClient,
};
use tonic::{
    Request, Status,
    metadata::MetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

#[derive(Clone)]
pub struct Control {
    client: ControlServiceClient<Channel>,
    bearer: MetadataValue<tonic::metadata::Ascii>,
}

impl Control {
    /// Connects lazily; the channel reconnects by itself. An https:// URL
    /// is verified against the system roots and `ca_pem`.
    pub fn new(url: &str, admin_token: &str, ca_pem: Option<&str>) -> Result<Self, String> {
        let bad = |e: &dyn std::fmt::Display| format!("--token-server {url}: {e}");
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| bad(&e))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(10));
        if url.starts_with("https://") {
            let mut tls = ClientTlsConfig::new().with_native_roots();
            if let Some(pem) = ca_pem {
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            endpoint = endpoint.tls_config(tls).map_err(|e| bad(&e))?;
        } else if !url.starts_with("http://") {
            return Err(bad(&"use an http:// or https:// URL"));
        }
        let bearer = MetadataValue::try_from(format!("Bearer {}", admin_token.trim()))
            .map_err(|_| "the admin credential is not a valid header value".to_owned())?;
        Ok(Self {
            client: ControlServiceClient::new(endpoint.connect_lazy()),
            bearer,
        })
    }

    fn request<T>(&self, body: T) -> Request<T> {
        let mut request = Request::new(body);
        request
            .metadata_mut()
            .insert("authorization", self.bearer.clone());
        request
    }

    /// Applies a document: the configuration's version after it, and what
    /// the token server found of the resource's outside dependencies (an
    /// oidc IdentityProvider's upstream), if it has any.
    pub async fn apply(&self, document: String) -> Result<(u64, Option<ResourceHealth>), Status> {
        let answer = self
            .client
            .clone()
            .apply(self.request(ApplyRequest { document }))
            .await?
            .into_inner();
        Ok((answer.version, answer.health))
    }

    pub async fn delete(&self, kind: &str, namespace: &str, name: &str) -> Result<bool, Status> {
        let resource = ResourceRef {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
        };
        Ok(self
            .client
            .clone()
            .delete(self.request(DeleteRequest {
                resource: Some(resource),
            }))
            .await?
            .into_inner()
            .existed)
    }

    pub async fn ready(&self) -> bool {
        self.client
            .clone()
            .get_status(self.request(GetStatusRequest {}))
            .await
            .is_ok_and(|r| r.into_inner().ready)
    }
}

/// The condition reason for a failed ControlService call.
pub fn reason(status: &Status) -> &'static str {
    match status.code() {
        tonic::Code::InvalidArgument => "Rejected",
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => "NotAuthorized",
        _ => "TokenServerUnavailable",
    }
}
