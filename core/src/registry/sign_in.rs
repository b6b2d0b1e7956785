//! An OAuthClient's browser-flow settings, from its spec: redirect URIs,
//! identity providers, consent, ID and refresh tokens, branding.

use std::time::Duration;

use tokenmesh_crds::{GrantType, OAuthClientSpec, SigningAlgorithm, parse_duration};

use super::{
    model::{Branding, SignIn},
    translate::confidential_url,
};

const DEFAULT_ID_TOKEN_TTL: Duration = Duration::from_secs(300);
const DEFAULT_REFRESH_TTL: Duration = Duration::from_secs(30 * 86_400);
const DEFAULT_REFRESH_IDLE_TTL: Duration = Duration::from_secs(7 * 86_400);
/// Longest redirect URI accepted (also bounds what authorize compares).
pub const MAX_REDIRECT_URI_LEN: usize = 2048;

type FieldError = (String, String);

fn err(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    (field.into(), message.into())
}

/// The browser-flow settings of a client; `public` for `method: none`.
pub(super) fn sign_in(
    id: &str,
    namespace: Option<&str>,
    spec: &OAuthClientSpec,
    grant_types: &[GrantType],
    public: bool,
) -> Result<SignIn, FieldError> {
    let code_flow = grant_types.contains(&GrantType::AuthorizationCode);
    if grant_types.contains(&GrantType::RefreshToken) && !code_flow {
        return Err(err(
            "spec.grantTypes",
            "refresh_token needs authorization_code: refresh tokens are issued at sign-in",
        ));
    }
    if !code_flow {
        for (field, set) in [
            ("spec.redirectUris", !spec.redirect_uris.is_empty()),
            (
                "spec.postLogoutRedirectUris",
                !spec.post_logout_redirect_uris.is_empty(),
            ),
            (
                "spec.identityProviders",
                !spec.identity_providers.is_empty(),
            ),
            ("spec.userInfo", spec.user_info.is_some()),
        ] {
            if set {
                return Err(err(
                    field,
                    "serves the authorization_code grant, which grantTypes does not list",
                ));
            }
        }
    } else {
        if spec.redirect_uris.is_empty() {
            return Err(err(
                "spec.redirectUris",
                "authorization_code needs at least one redirect URI",
            ));
        }
        if spec.identity_providers.is_empty() {
            return Err(err(
                "spec.identityProviders",
                "authorization_code needs at least one IdentityProvider people sign in with",
            ));
        }
    }
    if public && spec.require_pkce == Some(false) {
        return Err(err(
            "spec.requirePkce",
            "a public client (method none) always needs PKCE: nothing else binds its code to it",
        ));
    }
    for (list, field) in [
        (&spec.redirect_uris, "spec.redirectUris"),
        (
            &spec.post_logout_redirect_uris,
            "spec.postLogoutRedirectUris",
        ),
    ] {
        if list.len() > 32 {
            return Err(err(field, "at most 32 URIs"));
        }
        for (i, uri) in list.iter().enumerate() {
            check_redirect_uri(uri, public).map_err(|m| err(format!("{field}[{i}]"), m))?;
        }
    }
    let mut identity_providers = Vec::new();
    for (i, name) in spec.identity_providers.iter().enumerate() {
        if name.is_empty() || name.contains('/') || name.len() > 253 {
            return Err(err(
                format!("spec.identityProviders[{i}]"),
                format!("`{name}` is not the name of an IdentityProvider in this namespace"),
            ));
        }
        let key = namespace.map_or_else(|| name.clone(), |ns| format!("{ns}/{name}"));
        if identity_providers.contains(&key) {
            return Err(err(
                format!("spec.identityProviders[{i}]"),
                format!("`{name}` is listed twice"),
            ));
        }
        identity_providers.push(key);
    }
    let id_token = spec.id_token.clone().unwrap_or_default();
    let refresh = spec.refresh_token.clone().unwrap_or_default();
    let refresh_token_ttl = duration("spec.refreshToken.ttl", &refresh.ttl, DEFAULT_REFRESH_TTL)?;
    let refresh_token_idle_ttl = duration(
        "spec.refreshToken.idleTtl",
        &refresh.idle_ttl,
        DEFAULT_REFRESH_IDLE_TTL.min(refresh_token_ttl),
    )?;
    if refresh_token_idle_ttl > refresh_token_ttl {
        return Err(err("spec.refreshToken.idleTtl", "longer than ttl"));
    }
    Ok(SignIn {
        redirect_uris: spec.redirect_uris.clone(),
        post_logout_redirect_uris: spec.post_logout_redirect_uris.clone(),
        require_pkce: public || spec.require_pkce.unwrap_or(true),
        identity_providers,
        consent: spec.consent,
        id_token_ttl: duration("spec.idToken.ttl", &id_token.ttl, DEFAULT_ID_TOKEN_TTL)?,
        id_token_algorithm: id_token.algorithm.unwrap_or(SigningAlgorithm::RS256),
        userinfo_algorithm: spec.user_info.as_ref().and_then(|u| u.algorithm),
        refresh_token_ttl,
        refresh_token_idle_ttl,
        branding: branding(id, spec)?,
    })
}

fn duration(field: &str, text: &Option<String>, default: Duration) -> Result<Duration, FieldError> {
    match text {
        None => Ok(default),
        Some(text) => match parse_duration(text) {
            Ok(d) if !d.is_zero() => Ok(d),
            Ok(_) => Err(err(field, "must be longer than zero")),
            Err(e) => Err(err(field, e.to_string())),
        },
    }
}

/// A redirect URI people may be sent to with a code: absolute, no
/// fragment (RFC 6749 §3.1.2); https, or http to a loopback address
/// (RFC 8252 §7.3), or for a native (public) app a private-use scheme in
/// reverse-domain form (RFC 8252 §7.1: `com.example.app:/callback`).
fn check_redirect_uri(uri: &str, public: bool) -> Result<(), String> {
    if uri.len() > MAX_REDIRECT_URI_LEN {
        return Err(format!("longer than {MAX_REDIRECT_URI_LEN} characters"));
    }
    let parsed =
        url::Url::parse(uri).map_err(|e| format!("`{uri}` is not an absolute URI: {e}"))?;
    if parsed.fragment().is_some() {
        return Err(format!("`{uri}` has a fragment (RFC 6749 §3.1.2)"));
    }
    match parsed.scheme() {
        "https" | "http" => {
            if !confidential_url(uri) {
                return Err(format!(
                    "`{uri}`: a code sent over plain http can be read on the way; use https (http only to loopback)"
                ));
            }
            if parsed.host_str().is_none_or(str::is_empty) {
                return Err(format!("`{uri}` has no host"));
            }
            Ok(())
        }
        scheme if public && scheme.contains('.') => Ok(()),
        scheme => Err(format!(
            "`{uri}`: scheme `{scheme}` is not https, loopback http, or (for a public native app) a reverse-domain private-use scheme such as com.example.app"
        )),
    }
}

fn branding(id: &str, spec: &OAuthClientSpec) -> Result<Branding, FieldError> {
    let Some(branding) = &spec.branding else {
        return Ok(Branding {
            display_name: id.to_owned(),
            ..Branding::default()
        });
    };
    let display_name = branding
        .display_name
        .clone()
        .unwrap_or_else(|| id.to_owned());
    check_display_name("spec.branding.displayName", &display_name)?;
    if let Some(logo) = &branding.logo_url
        && (!confidential_url(logo) || logo.len() > 2048 || logo.contains(['"', '\'', '<', '>']))
    {
        return Err(err(
            "spec.branding.logoUrl",
            format!("`{logo}` is not an https URL (http only to loopback)"),
        ));
    }
    for (field, color) in [
        ("spec.branding.primaryColor", &branding.primary_color),
        ("spec.branding.backgroundColor", &branding.background_color),
    ] {
        if let Some(color) = color
            && !is_hex_color(color)
        {
            return Err(err(field, format!("`{color}` is not a colour `#rrggbb`")));
        }
    }
    Ok(Branding {
        display_name,
        logo_url: branding.logo_url.clone(),
        primary_color: branding.primary_color.clone(),
        background_color: branding.background_color.clone(),
    })
}

/// A name people read on a page: 1 to 100 characters, none a control.
pub(super) fn check_display_name(field: &str, name: &str) -> Result<(), FieldError> {
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(err(field, "must be 1 to 100 printable characters"));
    }
    Ok(())
}

fn is_hex_color(text: &str) -> bool {
    text.len() == 7 && text.starts_with('#') && text.bytes().skip(1).all(|b| b.is_ascii_hexdigit())
}
