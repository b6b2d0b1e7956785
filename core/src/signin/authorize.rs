//! The authorization request (RFC 6749 §4.1.1, OIDC Core §3.1.2.1),
//! validated, and what to do with it: log in, ask consent, or answer.
//!
//! Errors go back to the client's redirect URI (RFC 6749 §4.1.2.1) only
//! once the client and the redirect URI are known to be valid; before
//! that, an error page: never redirect to a URI nobody registered.

use tokenmesh_crds::{ConsentMode, GrantType};

use crate::{
    error::OAuthError,
    plan,
    registry::{Client, Registry, SignIn},
};

use super::{
    MAX_PARAM,
    claims::{AcrRequest, ClaimsRequest},
    grant::OIDC_SCOPES,
    pkce,
};

/// The request's parameters, as they came (query or form).
#[derive(Debug, Default, Clone)]
pub struct AuthorizeParams {
    pub response_type: Option<String>,
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub scope: Option<String>,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub prompt: Option<String>,
    pub max_age: Option<String>,
    pub login_hint: Option<String>,
    pub response_mode: Option<String>,
    /// `claims` (OIDC Core §5.5), JSON text.
    pub claims: Option<String>,
    pub acr_values: Option<String>,
    /// `resource` (RFC 8707) and `audience`.
    pub resources: Vec<String>,
    /// `request` or `request_uri` was given (request objects).
    pub request_object: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Prompt {
    pub none: bool,
    pub login: bool,
    pub consent: bool,
}

/// A valid authorization request.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthorizationRequest {
    pub client_id: String,
    /// Where the answer goes.
    pub redirect_uri: String,
    /// The `redirect_uri` as the request named it; empty when absent.
    pub requested_redirect_uri: String,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub scopes: Vec<String>,
    pub audiences: Vec<String>,
    pub code_challenge: Option<String>,
    pub prompt: Prompt,
    pub max_age: Option<u64>,
    pub login_hint: Option<String>,
    /// The `claims` parameter, parsed.
    pub claims: Option<ClaimsRequest>,
    /// The `acr` the sign-in should (or, essential, must) have.
    pub acr: AcrRequest,
}

impl AuthorizationRequest {
    /// The scopes the user consents to: those requested, and those whose
    /// claims the `claims` parameter asks for one by one.
    pub fn consent_scopes(&self) -> Vec<String> {
        let mut scopes = self.scopes.clone();
        for scope in self.claims.iter().flat_map(ClaimsRequest::consent_scopes) {
            if !scopes.iter().any(|s| s == scope) {
                scopes.push(scope.to_owned());
            }
        }
        scopes
    }
}

/// Why a request was refused, and where the user is told.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthorizeError {
    /// On a page of this server: the client or the redirect URI is not valid.
    Page(OAuthError),
    /// Back to the client (RFC 6749 §4.1.2.1).
    Redirect {
        redirect_uri: String,
        state: Option<String>,
        error: OAuthError,
    },
}

/// Finds the client and checks the redirect URI, then the rest.
pub fn validate(
    registry: &Registry,
    params: &AuthorizeParams,
    now: u64,
) -> Result<AuthorizationRequest, AuthorizeError> {
    let page = |text: &'static str| AuthorizeError::Page(OAuthError::InvalidRequest(text.into()));
    let client_id = params
        .client_id
        .as_deref()
        .ok_or_else(|| page("missing parameter client_id"))?;
    if client_id.len() > MAX_PARAM {
        return Err(page("client_id is too long"));
    }
    let client = registry
        .client(client_id)
        .ok_or_else(|| AuthorizeError::Page(OAuthError::InvalidClient("unknown client".into())))?;
    let settings = &client.sign_in;
    if settings.redirect_uris.is_empty() {
        return Err(page(
            "this client has no redirect URIs: it cannot sign people in",
        ));
    }
    let redirect_uri = match params.redirect_uri.as_deref() {
        Some(uri) if uri.len() <= MAX_PARAM && settings.allows_redirect(uri) => uri.to_owned(),
        Some(_) => return Err(page("redirect_uri is not registered for this client")),
        None => match settings.redirect_uris.as_slice() {
            [only] => only.clone(),
            _ => return Err(page("missing parameter redirect_uri")),
        },
    };
    let state = params.state.clone().filter(|s| s.len() <= MAX_PARAM);
    let back = |error: OAuthError| AuthorizeError::Redirect {
        redirect_uri: redirect_uri.clone(),
        state: state.clone(),
        error,
    };
    if params.state.as_ref().is_some_and(|s| s.len() > MAX_PARAM) {
        return Err(back(invalid("state is too long")));
    }
    rest(registry, client, settings, params, now)
        .map(|mut request| {
            request.redirect_uri = redirect_uri.clone();
            request.requested_redirect_uri = params.redirect_uri.clone().unwrap_or_default();
            request.state = state.clone();
            request
        })
        .map_err(back)
}

/// The checks whose errors go to the redirect URI.
fn rest(
    registry: &Registry,
    client: &Client,
    settings: &SignIn,
    params: &AuthorizeParams,
    now: u64,
) -> Result<AuthorizationRequest, OAuthError> {
    for value in [
        &params.scope,
        &params.nonce,
        &params.code_challenge,
        &params.prompt,
        &params.max_age,
        &params.login_hint,
        &params.acr_values,
    ]
    .into_iter()
    .flatten()
    .chain(&params.resources)
    {
        if value.len() > MAX_PARAM {
            return Err(invalid("a parameter is too long"));
        }
    }
    if params.request_object {
        return Err(OAuthError::RequestNotSupported(
            "request objects are not supported".into(),
        ));
    }
    match params.response_type.as_deref() {
        Some("code") => {}
        None => return Err(invalid("missing parameter response_type")),
        Some(_) => {
            return Err(OAuthError::UnsupportedResponseType(
                "only response_type=code is supported".into(),
            ));
        }
    }
    if !client.grant_types.contains(&GrantType::AuthorizationCode) {
        return Err(OAuthError::UnauthorizedClient(
            "the client may not use the authorization code grant".into(),
        ));
    }
    if params
        .response_mode
        .as_deref()
        .is_some_and(|mode| mode != "query")
    {
        return Err(invalid("response_mode must be query"));
    }
    let code_challenge = pkce::challenge(
        params.code_challenge.as_deref(),
        params.code_challenge_method.as_deref(),
        settings.require_pkce,
    )?;
    let scopes = scopes(registry, client, params.scope.as_deref(), now)?;
    // `claims` and `acr_values` are OpenID Connect's (Core §5.5, §3.1.2.1):
    // without `openid` they are ignored, or a plain OAuth request could put
    // personal claims in access tokens (and in the tokens embedded in them).
    let openid = scopes.iter().any(|s| s == "openid");
    let claims = params
        .claims
        .as_deref()
        .filter(|_| openid)
        .map(ClaimsRequest::parse)
        .transpose()?;
    let acr_values = params.acr_values.as_deref().filter(|_| openid);
    let acr = AcrRequest::of(acr_values, claims.as_ref())?;
    acr.check_possible()?;
    let audiences = plan::resolve_audiences(client, &params.resources)?;
    Ok(AuthorizationRequest {
        client_id: client.id.clone(),
        redirect_uri: String::new(),
        requested_redirect_uri: String::new(),
        state: None,
        nonce: params.nonce.clone(),
        scopes,
        audiences,
        code_challenge,
        prompt: prompt(params.prompt.as_deref())?,
        max_age: params
            .max_age
            .as_deref()
            .map(|v| v.parse::<u64>())
            .transpose()
            .map_err(|_| invalid("max_age must be a number of seconds"))?,
        login_hint: params.login_hint.clone(),
        claims,
        acr,
    })
}

/// The requested scopes: OpenID Connect's are open to every sign-in
/// client; the rest as for any token (defined, and allowed the client).
fn scopes(
    registry: &Registry,
    client: &Client,
    scope: Option<&str>,
    now: u64,
) -> Result<Vec<String>, OAuthError> {
    let Some(text) = scope else {
        return Ok(plan::resolve_scopes(registry, client, None, now)?
            .into_iter()
            .map(|s| s.name)
            .collect());
    };
    let requested = plan::requested_scopes(text)?;
    let (oidc, others): (Vec<String>, Vec<String>) = requested
        .into_iter()
        .partition(|s| OIDC_SCOPES.contains(&s.as_str()));
    let mut scopes = oidc;
    if !others.is_empty() {
        let others = plan::resolve_scopes(registry, client, Some(&others.join(" ")), now)?;
        scopes.extend(others.into_iter().map(|s| s.name));
    }
    Ok(scopes)
}

fn prompt(value: Option<&str>) -> Result<Prompt, OAuthError> {
    let mut prompt = Prompt::default();
    for word in value.unwrap_or("").split(' ').filter(|w| !w.is_empty()) {
        match word {
            "none" => prompt.none = true,
            "login" => prompt.login = true,
            "consent" => prompt.consent = true,
            // The one account of a session is the one selected.
            "select_account" => {}
            _ => {
                return Err(invalid(
                    "prompt must be none, login, consent or select_account",
                ));
            }
        }
    }
    if prompt.none && (prompt.login || prompt.consent) {
        return Err(invalid("prompt=none goes alone"));
    }
    Ok(prompt)
}

fn invalid(text: &'static str) -> OAuthError {
    OAuthError::InvalidRequest(text.into())
}

/// What a session is, for deciding whether to use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionView<'a> {
    pub auth_time: u64,
    /// The signed-in user.
    pub subject: &'a str,
}

/// Whether the user must (re)authenticate: no session, `prompt=login`, the
/// session older than `max_age`, or of another user than the one
/// `claims.id_token.sub` names. With `prompt=none` that is `login_required`
/// instead of a login page.
pub fn needs_login(
    request: &AuthorizationRequest,
    session: Option<SessionView<'_>>,
    now: u64,
) -> Result<bool, OAuthError> {
    let fresh = session.is_some_and(|s| {
        request
            .max_age
            .is_none_or(|max| now.saturating_sub(s.auth_time) <= max)
            && check_subject(request, s.subject).is_ok()
    });
    let login = !fresh || request.prompt.login;
    if login && request.prompt.none {
        return Err(OAuthError::LoginRequired(
            "the user is not signed in (prompt=none)".into(),
        ));
    }
    Ok(login)
}

/// Refuses to answer about `subject` when `claims.id_token.sub` names
/// another user (OIDC Core §3.1.2.2): no token for a different user, even
/// one with a session.
pub fn check_subject(request: &AuthorizationRequest, subject: &str) -> Result<(), OAuthError> {
    match request
        .claims
        .as_ref()
        .and_then(ClaimsRequest::required_subject)
    {
        Some(wanted) if wanted != subject => Err(OAuthError::AccessDenied(
            "the user signed in is not the one the request names (claims.id_token.sub)".into(),
        )),
        _ => Ok(()),
    }
}

/// Whether to ask consent: `consent: required` and the scopes not all
/// consented before (`consented`, space-separated), or `prompt=consent`.
pub fn needs_consent(
    settings: &SignIn,
    request: &AuthorizationRequest,
    consented: Option<&str>,
) -> Result<bool, OAuthError> {
    if settings.consent == ConsentMode::Implicit {
        return Ok(false);
    }
    let given: Vec<&str> = consented.unwrap_or("").split(' ').collect();
    let ask = request.prompt.consent
        || !request
            .consent_scopes()
            .iter()
            .all(|s| given.contains(&s.as_str()));
    if ask && request.prompt.none {
        return Err(OAuthError::ConsentRequired(
            "the user has not consented to these scopes (prompt=none)".into(),
        ));
    }
    Ok(ask)
}

/// The scopes consented after this consent: those given before and these.
pub fn consented_after(before: Option<&str>, request: &AuthorizationRequest) -> String {
    let asked = request.consent_scopes();
    let mut scopes: Vec<&str> = before
        .unwrap_or("")
        .split(' ')
        .filter(|s| !s.is_empty())
        .chain(asked.iter().map(String::as_str))
        .collect();
    scopes.sort_unstable();
    scopes.dedup();
    scopes.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signin::testing::{CHALLENGE, params, web_registry};
    use crate::testing::NOW;

    fn check(p: &AuthorizeParams) -> Result<AuthorizationRequest, AuthorizeError> {
        validate(&web_registry(), p, NOW)
    }

    fn redirected(p: &AuthorizeParams) -> OAuthError {
        match check(p).unwrap_err() {
            AuthorizeError::Redirect {
                error,
                redirect_uri,
                state,
            } => {
                assert_eq!(redirect_uri, "https://app.example/cb");
                assert_eq!(state.as_deref(), Some("xyz"));
                error
            }
            other => panic!("not redirected: {other:?}"),
        }
    }

    #[test]
    fn a_good_request_is_valid() {
        let request = check(&params()).unwrap();
        assert_eq!(request.redirect_uri, "https://app.example/cb");
        assert_eq!(request.scopes, ["openid", "profile", "orders:read"]);
        assert_eq!(request.code_challenge.as_deref(), Some(CHALLENGE));
        assert_eq!(request.state.as_deref(), Some("xyz"));
        assert_eq!(request.nonce.as_deref(), Some("n-1"));
    }

    #[test]
    fn unknown_clients_and_unregistered_redirects_get_a_page() {
        let mut p = params();
        p.client_id = Some("nobody".into());
        assert!(matches!(
            check(&p),
            Err(AuthorizeError::Page(OAuthError::InvalidClient(_)))
        ));
        let mut p = params();
        p.redirect_uri = Some("https://evil.example/cb".into());
        assert!(matches!(check(&p), Err(AuthorizeError::Page(_))));
        let mut p = params();
        p.client_id = None;
        assert!(matches!(check(&p), Err(AuthorizeError::Page(_))));
        let mut p = params();
        p.redirect_uri = Some(format!("https://app.example/cb{}", "a".repeat(3000)));
        assert!(matches!(check(&p), Err(AuthorizeError::Page(_))));
    }

    #[test]
    fn other_errors_go_back_to_the_client() {
        let mut p = params();
        p.response_type = Some("token".into());
        assert!(matches!(
            redirected(&p),
            OAuthError::UnsupportedResponseType(_)
        ));
        let mut p = params();
        p.code_challenge = None;
        p.code_challenge_method = None;
        assert!(matches!(redirected(&p), OAuthError::InvalidRequest(_)));
        let mut p = params();
        p.code_challenge_method = Some("plain".into());
        assert!(matches!(redirected(&p), OAuthError::InvalidRequest(_)));
        let mut p = params();
        p.scope = Some("openid orders:delete".into());
        assert!(matches!(redirected(&p), OAuthError::InvalidScope(_)));
        let mut p = params();
        p.prompt = Some("none login".into());
        assert!(matches!(redirected(&p), OAuthError::InvalidRequest(_)));
        let mut p = params();
        p.nonce = Some("n".repeat(MAX_PARAM + 1));
        assert!(matches!(redirected(&p), OAuthError::InvalidRequest(_)));
        let mut p = params();
        p.request_object = true;
        assert!(matches!(redirected(&p), OAuthError::RequestNotSupported(_)));
        let mut p = params();
        p.resources = vec!["billing".into()];
        assert!(matches!(redirected(&p), OAuthError::InvalidTarget(_)));
    }

    #[test]
    fn without_openid_the_claims_parameter_and_acr_values_are_ignored() {
        let mut p = params();
        p.scope = Some("orders:read".into());
        p.claims = Some(r#"{"userinfo": {"email": null, "phone_number": null}}"#.into());
        p.acr_values = Some("urn:unknown".into());
        let request = check(&p).unwrap();
        assert!(request.claims.is_none());
        assert!(request.acr.values.is_empty());
        assert_eq!(request.consent_scopes(), ["orders:read"]);
    }

    #[test]
    fn the_claims_parameter_and_acr_are_checked_and_kept_with_the_request() {
        let mut p = params();
        p.claims = Some(
            r#"{"userinfo": {"email": null}, "id_token": {"acr": {"values": ["urn:x"]}}}"#.into(),
        );
        p.acr_values = Some("urn:ignored".into());
        let request = check(&p).unwrap();
        let claims = request.claims.as_ref().unwrap();
        assert!(claims.userinfo.contains_key("email"));
        assert_eq!(request.acr.values, ["urn:x"], "claims.id_token.acr wins");
        assert!(!request.acr.essential);
        assert_eq!(
            request.consent_scopes(),
            ["openid", "profile", "orders:read", "email"],
            "email is consented with the scopes"
        );
        let reg = web_registry();
        let settings = &reg.client("web").unwrap().sign_in;
        assert_eq!(
            needs_consent(settings, &request, Some("openid orders:read profile")),
            Ok(true)
        );
        let given = consented_after(None, &request);
        assert_eq!(given, "email openid orders:read profile");
        assert_eq!(needs_consent(settings, &request, Some(&given)), Ok(false));

        let mut p = params();
        p.claims = Some("{\"userinfo\": 1}".into());
        assert!(matches!(redirected(&p), OAuthError::InvalidRequest(_)));
        let mut p = params();
        p.claims =
            Some(r#"{"id_token": {"acr": {"essential": true, "values": ["urn:gold"]}}}"#.into());
        assert!(matches!(
            redirected(&p),
            OAuthError::UnmetAuthenticationRequirements(_)
        ));
        let mut p = params();
        p.acr_values = Some("a".repeat(MAX_PARAM + 1));
        assert!(matches!(redirected(&p), OAuthError::InvalidRequest(_)));
    }

    #[test]
    fn prompt_none_without_a_session_is_login_required() {
        let mut p = params();
        p.prompt = Some("none".into());
        let request = check(&p).unwrap();
        assert!(matches!(
            needs_login(&request, None, NOW),
            Err(OAuthError::LoginRequired(_))
        ));
        let session = Some(SessionView {
            auth_time: NOW - 10,
            subject: "alice",
        });
        assert_eq!(needs_login(&request, session, NOW), Ok(false));
    }

    #[test]
    fn max_age_and_prompt_login_ask_for_a_new_login() {
        let mut p = params();
        p.max_age = Some("60".into());
        let request = check(&p).unwrap();
        let old = Some(SessionView {
            auth_time: NOW - 61,
            subject: "alice",
        });
        assert_eq!(needs_login(&request, old, NOW), Ok(true));
        let recent = Some(SessionView {
            auth_time: NOW - 5,
            subject: "alice",
        });
        assert_eq!(needs_login(&request, recent, NOW), Ok(false));
        let mut p = params();
        p.prompt = Some("login".into());
        assert_eq!(needs_login(&check(&p).unwrap(), recent, NOW), Ok(true));
    }

    #[test]
    fn a_request_for_one_user_gets_no_answer_about_another() {
        let mut p = params();
        p.claims = Some(r#"{"id_token": {"sub": {"value": "bob"}}}"#.into());
        let request = check(&p).unwrap();
        let alice = Some(SessionView {
            auth_time: NOW - 5,
            subject: "alice",
        });
        assert_eq!(needs_login(&request, alice, NOW), Ok(true), "log bob in");
        let bob = Some(SessionView {
            auth_time: NOW - 5,
            subject: "bob",
        });
        assert_eq!(needs_login(&request, bob, NOW), Ok(false));
        assert!(matches!(
            check_subject(&request, "alice"),
            Err(OAuthError::AccessDenied(_))
        ));
        assert_eq!(check_subject(&request, "bob"), Ok(()));
        p.prompt = Some("none".into());
        let request = check(&p).unwrap();
        assert!(matches!(
            needs_login(&request, alice, NOW),
            Err(OAuthError::LoginRequired(_))
        ));
    }

    #[test]
    fn consent_is_asked_once_per_scope_set() {
        let request = check(&params()).unwrap();
        let reg = web_registry();
        let settings = &reg.client("web").unwrap().sign_in;
        assert_eq!(needs_consent(settings, &request, None), Ok(true));
        let given = consented_after(None, &request);
        assert_eq!(needs_consent(settings, &request, Some(&given)), Ok(false));
        assert_eq!(
            needs_consent(settings, &request, Some("openid profile")),
            Ok(true)
        );
        let implicit = SignIn {
            consent: ConsentMode::Implicit,
            ..settings.clone()
        };
        assert_eq!(needs_consent(&implicit, &request, None), Ok(false));
    }
}
