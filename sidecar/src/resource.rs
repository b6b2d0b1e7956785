//! Protected resource metadata (RFC 9728): a client that meets this
//! service and gets a 401 finds `resource_metadata` in the challenge, the
//! URL of a document naming the authorization server that issues tokens
//! for it, so it can discover where to get one.
//!
//! The resource identifier is `--resource-url` when given (a service behind
//! an ingress, whose public URL the sidecar cannot see); otherwise the
//! origin the client called: the request's scheme (`https` on a TLS inbound
//! listener) and its Host (the `:authority` over HTTP/2). The document is
//! answered by the sidecar itself, without a token, at
//! `/.well-known/oauth-protected-resource` and, for a resource with a path,
//! at that path after it (§3.1: `https://api.example/orders` has its
//! document at `https://api.example/.well-known/oauth-protected-resource/orders`).

use std::{borrow::Cow, str::FromStr};

use http::{Request, Uri, header, uri::Authority};
use serde_json::{Value, json};

/// The well-known path (RFC 9728 §3).
pub const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// The DPoP proof algorithms inbound verification takes (RFC 9449 §7.1's
/// `algs`, RFC 9728's `dpop_signing_alg_values_supported`).
pub const DPOP_ALGS: [&str; 4] = ["ES256", "EdDSA", "RS256", "PS256"];

/// The longest `--resource-url` taken: a URL clients put in a header.
const MAX_URL: usize = 2048;

/// A resource identifier: an `http(s)` origin and a path without its
/// trailing slash (empty for the origin alone); no query, no fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceUrl {
    origin: String,
    path: String,
}

impl ResourceUrl {
    /// The identifier, the metadata's `resource`.
    pub fn identifier(&self) -> String {
        format!("{}{}", self.origin, self.path)
    }

    /// Where its metadata is (§3.1): the well-known path between the
    /// origin and the resource's path.
    pub fn metadata_url(&self) -> String {
        format!("{}{WELL_KNOWN}{}", self.origin, self.path)
    }
}

impl FromStr for ResourceUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let refuse = |why: &str| Err(format!("`{text}`: {why}"));
        if text.len() > MAX_URL {
            return Err(format!("a resource URL of at most {MAX_URL} bytes"));
        }
        if text.contains('#') {
            return refuse("a resource URL has no fragment (RFC 9728 §1.2)");
        }
        let Ok(uri) = text.parse::<Uri>() else {
            return refuse("not a URL");
        };
        let scheme = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some(scheme @ ("http" | "https")) => scheme.to_owned(),
            _ => return refuse("write an http:// or https:// URL"),
        };
        let Some(authority) = uri.authority().filter(|a| !a.host().is_empty()) else {
            return refuse("the URL names no host");
        };
        if authority.as_str().contains('@') {
            return refuse("a resource URL carries no user name");
        }
        if uri.query().is_some() {
            return refuse("a resource URL has no query here");
        }
        Ok(Self {
            origin: format!("{scheme}://{authority}"),
            path: uri.path().trim_end_matches('/').to_owned(),
        })
    }
}

/// What the inbound listener says about the resource it protects.
#[derive(Debug, Clone, Default)]
pub struct ProtectedResource {
    /// `--resource-url`: the identifier whatever the request says.
    configured: Option<ResourceUrl>,
    /// The listener asks for client certificates, so certificate-bound
    /// tokens (RFC 8705) can pass.
    mtls: bool,
}

impl ProtectedResource {
    pub fn new(configured: Option<ResourceUrl>, mtls: bool) -> Self {
        Self { configured, mtls }
    }

    /// Whether `path` is one of the metadata document's paths.
    pub fn serves(&self, path: &str) -> bool {
        match path.strip_prefix(WELL_KNOWN) {
            Some("") => true,
            Some(rest) => self
                .configured
                .as_ref()
                .is_some_and(|resource| !resource.path.is_empty() && resource.path == rest),
            None => false,
        }
    }

    /// The resource `request` was for: the configured one, or the origin
    /// it called (`scheme` unless the request names its own); `None` if it
    /// names no valid authority.
    pub fn resource<'a, B>(
        &'a self,
        request: &Request<B>,
        scheme: &str,
    ) -> Option<Cow<'a, ResourceUrl>> {
        if let Some(configured) = &self.configured {
            return Some(Cow::Borrowed(configured));
        }
        let uri = request.uri();
        let authority = match uri.authority() {
            Some(authority) => authority.clone(),
            None => Authority::try_from(request.headers().get(header::HOST)?.as_bytes()).ok()?,
        };
        if authority.host().is_empty() || authority.as_str().contains('@') {
            return None;
        }
        let scheme = match uri.scheme_str() {
            Some(own) if own.eq_ignore_ascii_case("https") => "https",
            Some(own) if own.eq_ignore_ascii_case("http") => "http",
            Some(_) => return None,
            None => scheme,
        };
        Some(Cow::Owned(ResourceUrl {
            origin: format!("{scheme}://{authority}"),
            path: String::new(),
        }))
    }

    /// The metadata document (RFC 9728 §2) of `resource`, whose tokens
    /// `issuer` issues. DPoP proofs are always checked (for DPoP-bound
    /// tokens), but bearer tokens pass too.
    pub fn document(&self, resource: &ResourceUrl, issuer: &str) -> Value {
        let mut document = json!({
            "resource": resource.identifier(),
            "authorization_servers": [issuer],
            "bearer_methods_supported": ["header"],
            "dpop_signing_alg_values_supported": DPOP_ALGS,
            "dpop_bound_access_tokens_required": false,
        });
        if self.mtls {
            document["tls_client_certificate_bound_access_tokens"] = Value::Bool(true);
        }
        document
    }
}

/// `challenge` with the `resource_metadata` parameter (RFC 9728 §5.1), its
/// URL as a quoted-string.
pub fn with_metadata(challenge: &str, metadata_url: &str) -> String {
    let mut quoted = String::with_capacity(metadata_url.len());
    for c in metadata_url.chars() {
        if matches!(c, '"' | '\\') {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    format!("{challenge}, resource_metadata=\"{quoted}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> ResourceUrl {
        text.parse().unwrap()
    }

    #[test]
    fn a_resource_url_is_an_origin_and_a_path_without_query_or_fragment() {
        let orders = url("https://api.example/orders/");
        assert_eq!(orders.identifier(), "https://api.example/orders");
        assert_eq!(
            orders.metadata_url(),
            "https://api.example/.well-known/oauth-protected-resource/orders"
        );
        let root = url("HTTPS://api.example:8443/");
        assert_eq!(root.identifier(), "https://api.example:8443");
        assert_eq!(
            root.metadata_url(),
            "https://api.example:8443/.well-known/oauth-protected-resource"
        );
        for bad in [
            "api.example/orders",
            "/orders",
            "ftp://api.example",
            "https://api.example/orders?x=1",
            "https://api.example/#top",
            "https://user@api.example/",
            "https:///orders",
        ] {
            assert!(bad.parse::<ResourceUrl>().is_err(), "{bad}");
        }
        let long = format!("https://api.example/{}", "a".repeat(MAX_URL));
        assert!(long.parse::<ResourceUrl>().is_err());
    }

    #[test]
    fn the_document_is_served_at_the_well_known_path_and_the_resources_own() {
        let derived = ProtectedResource::default();
        assert!(derived.serves(WELL_KNOWN));
        assert!(!derived.serves("/.well-known/oauth-protected-resource/orders"));
        assert!(!derived.serves("/.well-known/oauth-protected-resourcex"));
        assert!(!derived.serves("/orders"));
        let orders = ProtectedResource::new(Some(url("https://api.example/orders")), false);
        assert!(orders.serves(WELL_KNOWN));
        assert!(orders.serves("/.well-known/oauth-protected-resource/orders"));
        assert!(!orders.serves("/.well-known/oauth-protected-resource/orders/x"));
        assert!(!orders.serves("/.well-known/oauth-protected-resource/payments"));
    }

    fn request(uri: &str, host: Option<&str>) -> Request<()> {
        let mut request = Request::builder().uri(uri);
        if let Some(host) = host {
            request = request.header(header::HOST, host);
        }
        request.body(()).unwrap()
    }

    #[test]
    fn the_derived_resource_is_the_origin_the_client_called() {
        let derived = ProtectedResource::default();
        let resource = |request: &Request<()>, scheme| {
            derived.resource(request, scheme).map(|r| r.identifier())
        };
        let over_http1 = request("/orders/7?x=1", Some("orders.local:15006"));
        assert_eq!(
            resource(&over_http1, "http").as_deref(),
            Some("http://orders.local:15006")
        );
        assert_eq!(
            resource(&over_http1, "https").as_deref(),
            Some("https://orders.local:15006"),
            "a TLS listener's resource is https"
        );
        // HTTP/2 and absolute form name their own scheme and authority.
        let over_http2 = request("https://orders.example/orders", Some("ignored"));
        assert_eq!(
            resource(&over_http2, "http").as_deref(),
            Some("https://orders.example")
        );
        for host in [
            None,
            Some("a b"),
            Some("\"x\""),
            Some("user@host"),
            Some(""),
        ] {
            assert_eq!(resource(&request("/", host), "http"), None, "{host:?}");
        }
        // Configured: whatever the request says.
        let configured = ProtectedResource::new(Some(url("https://api.example/orders")), false);
        assert_eq!(
            configured
                .resource(&over_http1, "http")
                .map(|r| r.identifier())
                .as_deref(),
            Some("https://api.example/orders")
        );
    }

    #[test]
    fn the_document_names_the_issuer_and_what_tokens_pass() {
        let resource = url("https://api.example/orders");
        let document = ProtectedResource::default().document(&resource, "https://issuer.example");
        assert_eq!(
            document,
            json!({
                "resource": "https://api.example/orders",
                "authorization_servers": ["https://issuer.example"],
                "bearer_methods_supported": ["header"],
                "dpop_signing_alg_values_supported": ["ES256", "EdDSA", "RS256", "PS256"],
                "dpop_bound_access_tokens_required": false,
            })
        );
        let mtls = ProtectedResource::new(None, true).document(&resource, "https://i");
        assert_eq!(mtls["tls_client_certificate_bound_access_tokens"], true);
    }

    #[test]
    fn the_metadata_url_is_a_quoted_string_parameter() {
        assert_eq!(
            with_metadata("Bearer error=\"invalid_token\"", "https://a/x"),
            "Bearer error=\"invalid_token\", resource_metadata=\"https://a/x\""
        );
        assert_eq!(
            with_metadata("DPoP algs=\"ES256\"", "https://a/\"\\"),
            "DPoP algs=\"ES256\", resource_metadata=\"https://a/\\\"\\\\\""
        );
    }
}
