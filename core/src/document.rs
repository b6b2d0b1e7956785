//! Resource documents: the typed resources, where each came from, and
//! parsing them from YAML. Every error names the file, the document and the
//! field.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use serde::de::DeserializeOwned;
use serde_json::Value;
use tokenmesh_crds::{
    API_VERSION, ExchangePolicy, IdentityProvider, OAuthClient, Scope, TokenServer,
};

/// One resource, whichever door it came through.
#[derive(Debug, Clone)]
pub enum Resource {
    TokenServer(TokenServer),
    /// Boxed: the largest spec by far.
    OAuthClient(Box<OAuthClient>),
    Scope(Scope),
    ExchangePolicy(ExchangePolicy),
    IdentityProvider(IdentityProvider),
}

impl Resource {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::TokenServer(_) => "TokenServer",
            Self::OAuthClient(_) => "OAuthClient",
            Self::Scope(_) => "Scope",
            Self::ExchangePolicy(_) => "ExchangePolicy",
            Self::IdentityProvider(_) => "IdentityProvider",
        }
    }
}

/// Where a resource came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: Option<PathBuf>,
    /// 1-based document number within the file.
    pub document: usize,
    pub kind: String,
    pub name: String,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{}, document {}", file.display(), self.document)?,
            None => write!(f, "document {}", self.document)?,
        }
        if !self.kind.is_empty() {
            write!(f, " ({} {})", self.kind, self.name)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct Document {
    pub origin: Origin,
    pub resource: Resource,
}

/// A configuration error, naming where and which field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {}{message}", field_prefix(field))]
pub struct ConfigError {
    pub origin: String,
    pub field: String,
    pub message: String,
}

fn field_prefix(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!("field `{field}`: ")
    }
}

impl ConfigError {
    pub fn new(
        origin: impl fmt::Display,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            origin: origin.to_string(),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Parses multi-document YAML text into resources.
pub fn parse_documents(file: Option<&Path>, text: &str) -> Result<Vec<Document>, ConfigError> {
    let mut documents = Vec::new();
    for (index, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let mut origin = Origin {
            file: file.map(Path::to_path_buf),
            document: index + 1,
            kind: String::new(),
            name: String::new(),
        };
        let value: Value = serde::Deserialize::deserialize(de)
            .map_err(|e| ConfigError::new(&origin, "", format!("not valid YAML: {e}")))?;
        if value.is_null() {
            continue;
        }
        let resource = parse_resource(value, &mut origin)?;
        documents.push(Document { origin, resource });
    }
    Ok(documents)
}

/// Turns one document into a typed resource; `origin` learns its kind and name.
pub fn parse_resource(value: Value, origin: &mut Origin) -> Result<Resource, ConfigError> {
    let str_at = |pointer: &str| {
        value
            .pointer(pointer)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let api_version = str_at("/apiVersion");
    origin.kind = str_at("/kind").unwrap_or_default();
    origin.name = str_at("/metadata/name").unwrap_or_default();
    // Namespaced resources (from the operator) are known as namespace/name.
    if let Some(namespace) = str_at("/metadata/namespace").filter(|ns| !ns.is_empty())
        && !origin.name.is_empty()
    {
        origin.name = format!("{namespace}/{}", origin.name);
    }
    if api_version.as_deref() != Some(API_VERSION) {
        return Err(ConfigError::new(
            &*origin,
            "apiVersion",
            format!(
                "must be {API_VERSION}, found {}",
                api_version.as_deref().unwrap_or("nothing")
            ),
        ));
    }
    if origin.name.is_empty() {
        return Err(ConfigError::new(&*origin, "metadata.name", "is required"));
    }
    let resource = match origin.kind.as_str() {
        "TokenServer" => Resource::TokenServer(typed(value, origin)?),
        "OAuthClient" => Resource::OAuthClient(Box::new(typed(value, origin)?)),
        "Scope" => Resource::Scope(typed(value, origin)?),
        "ExchangePolicy" => Resource::ExchangePolicy(typed(value, origin)?),
        "IdentityProvider" => Resource::IdentityProvider(typed(value, origin)?),
        other => {
            return Err(ConfigError::new(
                &*origin,
                "kind",
                format!(
                    "unknown kind `{other}`: expected TokenServer, OAuthClient, Scope, ExchangePolicy or IdentityProvider"
                ),
            ));
        }
    };
    Ok(resource)
}

fn typed<T: DeserializeOwned>(value: Value, origin: &Origin) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let field = err.path().to_string();
        let field = if field == "." { String::new() } else { field };
        ConfigError::new(origin, field, err.into_inner().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_kind_and_skips_empty_documents() {
        let text = "---\napiVersion: tokenmesh.dev/v1alpha1\nkind: Scope\nmetadata: {name: a}\nspec: {name: \"a:b\"}\n---\n---\napiVersion: tokenmesh.dev/v1alpha1\nkind: TokenServer\nmetadata: {name: default}\nspec: {signing: {algorithm: EdDSA}}\n";
        let docs = parse_documents(None, text).unwrap();
        assert_eq!(docs.len(), 2);
        assert!(matches!(docs[0].resource, Resource::Scope(_)));
        assert_eq!(docs[1].origin.document, 3);
    }

    #[test]
    fn errors_name_the_document_and_field() {
        let text = "apiVersion: tokenmesh.dev/v1alpha1\nkind: Scope\nmetadata: {name: ok}\nspec: {name: x}\n---\napiVersion: tokenmesh.dev/v1alpha1\nkind: OAuthClient\nmetadata: {name: gw}\nspec:\n  authentication: {method: client_secret_magic}\n";
        let err = parse_documents(Some(Path::new("c.yaml")), text).unwrap_err();
        assert_eq!(err.origin, "c.yaml, document 2 (OAuthClient gw)");
        assert_eq!(err.field, "spec.authentication.method");
        assert!(
            err.message.contains("client_secret_magic"),
            "{}",
            err.message
        );
    }

    #[test]
    fn unknown_fields_kinds_and_versions_are_refused() {
        let doc = |body: &str| parse_documents(None, body).unwrap_err();
        let err = doc(
            "apiVersion: tokenmesh.dev/v1alpha1\nkind: Scope\nmetadata: {name: s}\nspec: {nmae: x}\n",
        );
        assert_eq!(err.field, "spec.nmae");
        assert!(err.message.contains("nmae"));
        assert_eq!(
            doc("apiVersion: v1\nkind: Scope\nmetadata: {name: s}\n").field,
            "apiVersion"
        );
        assert_eq!(
            doc("apiVersion: tokenmesh.dev/v1alpha1\nkind: Nope\nmetadata: {name: s}\n").field,
            "kind"
        );
        assert_eq!(
            doc("apiVersion: tokenmesh.dev/v1alpha1\nkind: Scope\nmetadata: {}\n").field,
            "metadata.name"
        );
        assert!(doc("a: [").message.contains("YAML"));
    }
}
