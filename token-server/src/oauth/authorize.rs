//! The authorization endpoint (RFC 6749 §3.1, OIDC Core §3.1.2): GET or
//! POST, then the login and consent forms, which POST back here with the
//! request carried in hidden fields and a CSRF token. An upstream
//! provider's button leaves for the upstream and the request resumes at
//! its callback (`federation`). The core validates and decides; this module
//! keeps the cookies and renders.

use std::sync::Arc;

use axum::{
    body::Body,
    extract::{RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use tokenmesh_core::{
    OAuthError,
    registry::{Client, ProviderKind, Registry},
    signin::{
        authorize::{self, AuthorizationRequest, AuthorizeError, AuthorizeParams, SessionView},
        claims, code,
        grant::Authorization,
        redirect,
    },
};
use tokenmesh_tokens::secret::random_id;

use super::{
    federation::{self, Callback, Refusal},
    form::Form,
    pages::{self, LoginFailure, LoginForm},
    session::{self, CSRF_FIELD},
};
use crate::{state::AppState, store::SsoSession};

pub async fn authorize_get(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    answer(&state, &headers, Form::from_query(query.as_deref()), false).await
}

/// The request a pending sign-in kept, going on with the upstream's answer.
pub(super) async fn resume(
    state: &AppState,
    headers: &HeaderMap,
    request: &Form,
    back: Callback,
) -> Response {
    flow(state, headers, request, false, Some(back)).await
}

pub async fn authorize_post(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer(&state, &headers, Form::read(&headers, body).await, true).await
}

/// The flow for a request read as a form, or the page that says why not.
async fn answer(
    state: &AppState,
    headers: &HeaderMap,
    form: Result<Form, OAuthError>,
    post: bool,
) -> Response {
    match form {
        Ok(form) => flow(state, headers, &form, post, None).await,
        Err(OAuthError::TooLarge) => pages::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "The sign-in request is too long.",
        ),
        Err(err) => pages::error(StatusCode::BAD_REQUEST, err.description()),
    }
}

fn params_of(form: &Form) -> AuthorizeParams {
    let get = |name| form.get(name).map(str::to_owned);
    AuthorizeParams {
        response_type: get("response_type"),
        client_id: get("client_id"),
        redirect_uri: get("redirect_uri"),
        scope: get("scope"),
        state: get("state"),
        nonce: get("nonce"),
        code_challenge: get("code_challenge"),
        code_challenge_method: get("code_challenge_method"),
        prompt: get("prompt"),
        max_age: get("max_age"),
        login_hint: get("login_hint"),
        response_mode: get("response_mode"),
        claims: get("claims"),
        acr_values: get("acr_values"),
        resources: form
            .all("resource")
            .iter()
            .chain(form.all("audience"))
            .cloned()
            .collect(),
        request_object: form.get("request").is_some() || form.get("request_uri").is_some(),
    }
}

/// The request's parameters again, as hidden fields, with the CSRF token;
/// `prompt` without `login` once the user has just signed in.
fn carried(params: &AuthorizeParams, csrf: &str, drop_login: bool) -> String {
    let mut fields = fields(params, drop_login);
    fields.push((CSRF_FIELD, csrf.to_owned()));
    pages::hidden(&fields)
}

/// The request's parameters as name and value pairs (`carried`).
pub(super) fn fields(params: &AuthorizeParams, drop_login: bool) -> Vec<(&'static str, String)> {
    let mut fields: Vec<(&str, String)> = [
        ("response_type", &params.response_type),
        ("client_id", &params.client_id),
        ("redirect_uri", &params.redirect_uri),
        ("scope", &params.scope),
        ("state", &params.state),
        ("nonce", &params.nonce),
        ("code_challenge", &params.code_challenge),
        ("code_challenge_method", &params.code_challenge_method),
        ("max_age", &params.max_age),
        ("login_hint", &params.login_hint),
        ("claims", &params.claims),
        ("acr_values", &params.acr_values),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.clone().map(|v| (name, v)))
    .collect();
    if let Some(prompt) = &params.prompt {
        let kept: Vec<&str> = prompt
            .split(' ')
            .filter(|w| !(drop_login && *w == "login"))
            .collect();
        fields.push(("prompt", kept.join(" ")));
    }
    fields.extend(params.resources.iter().map(|r| ("resource", r.clone())));
    fields
}

/// Where the answer goes: `redirect_uri` with the code or the error,
/// `state` and `iss` (RFC 9207).
fn back_to_client(
    state: &AppState,
    redirect_uri: &str,
    params: &[(&str, &str)],
    request_state: Option<&str>,
    post: bool,
) -> Response {
    let registry = state.registry.load();
    let mut all = params.to_vec();
    if let Some(s) = request_state {
        all.push(("state", s));
    }
    all.push(("iss", registry.server.issuer.as_str()));
    let Some(location) = redirect::with_params(redirect_uri, &all) else {
        return pages::error(StatusCode::BAD_REQUEST, "The redirect URI is not valid.");
    };
    let status = if post {
        StatusCode::SEE_OTHER
    } else {
        StatusCode::FOUND
    };
    let mut response = status.into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn error_to_client(
    state: &AppState,
    request: &AuthorizationRequest,
    error: &OAuthError,
    post: bool,
) -> Response {
    back_to_client(
        state,
        &request.redirect_uri,
        &[
            ("error", &error.to_string()),
            ("error_description", error.description()),
        ],
        request.state.as_deref(),
        post,
    )
}

fn with_cookies(mut response: Response, cookies: Vec<HeaderValue>) -> Response {
    for cookie in cookies {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

async fn flow(
    state: &AppState,
    headers: &HeaderMap,
    form: &Form,
    post: bool,
    callback: Option<Callback>,
) -> Response {
    let registry = state.registry.load();
    let now = state.now();
    let params = params_of(form);
    let request = match authorize::validate(&registry, &params, now) {
        Ok(request) => request,
        Err(AuthorizeError::Page(err)) => {
            tracing::debug!(error = %err, "authorization request refused on a page");
            return pages::error(StatusCode::BAD_REQUEST, err.description());
        }
        Err(AuthorizeError::Redirect {
            redirect_uri,
            state: request_state,
            error,
        }) => {
            return back_to_client(
                state,
                &redirect_uri,
                &[
                    ("error", &error.to_string()),
                    ("error_description", error.description()),
                ],
                request_state.as_deref(),
                post,
            );
        }
    };
    let Some(client) = registry.client(&request.client_id) else {
        return pages::error(StatusCode::BAD_REQUEST, "unknown client");
    };
    let mut cookies = Vec::new();
    let answer = match steps(
        state,
        &registry,
        client,
        headers,
        form,
        &params,
        &request,
        post,
        callback.as_ref(),
        &mut cookies,
    )
    .await
    {
        Ok(response) => response,
        Err(Step::Client(err)) => error_to_client(state, &request, &err, post),
        Err(Step::Page(status, message)) => pages::error(status, message),
    };
    with_cookies(answer, cookies)
}

/// Where a step that cannot go on sends the user.
enum Step {
    /// Back to the client with this error.
    Client(OAuthError),
    /// An error page (the browser's own fault: a stale form).
    Page(StatusCode, &'static str),
}

impl From<OAuthError> for Step {
    fn from(err: OAuthError) -> Self {
        Self::Client(err)
    }
}

#[allow(clippy::too_many_arguments)]
async fn steps(
    state: &AppState,
    registry: &Registry,
    client: &Client,
    headers: &HeaderMap,
    form: &Form,
    params: &AuthorizeParams,
    request: &AuthorizationRequest,
    post: bool,
    callback: Option<&Callback>,
    cookies: &mut Vec<HeaderValue>,
) -> Result<Response, Step> {
    let now = state.now();
    let action = match callback {
        Some(_) => Some("callback"),
        None if post => form.get("action"),
        None => None,
    };
    let (csrf, new_csrf) = session::csrf_token(state, headers)?;
    cookies.extend(new_csrf);
    // A callback is bound to this browser's CSRF cookie (`federation`).
    if callback.is_none()
        && action.is_some()
        && !session::csrf_matches(headers, form.get(CSRF_FIELD))
    {
        return Err(Step::Page(
            StatusCode::FORBIDDEN,
            "This form has expired or did not come from this site. Go back to the application and sign in again.",
        ));
    }
    let current = session::current(state, headers, now).await?;
    // A session with a provider this client may not use does not count.
    let mut session = current
        .clone()
        .filter(|s| client.sign_in.identity_providers.contains(&s.idp));
    let mut signed_in_now = false;
    let mut consented_now = false;
    let login_page = |hint: Option<&str>, failure: LoginFailure<'_>| {
        pages::login(
            &client.sign_in.branding,
            &login_forms(registry, client),
            &carried(params, &csrf, false),
            hint,
            failure,
        )
    };
    let refused = |refusal| match refusal {
        Refusal::Denied => Err(Step::Client(OAuthError::AccessDenied(
            "the user refused at the identity provider".into(),
        ))),
        Refusal::Failed(name) => Ok(login_page(
            request.login_hint.as_deref(),
            LoginFailure::Upstream(&name),
        )),
        Refusal::Page(status, message) => Err(Step::Page(status, message)),
        Refusal::OAuth(err) => Err(Step::Client(err)),
    };
    match action {
        None => {}
        Some("upstream") => {
            return federation::start(state, registry, client, form, params, request, &csrf, now)
                .await
                .or_else(refused);
        }
        Some("callback") => {
            let Some(back) = callback else {
                return Err(Step::Page(StatusCode::BAD_REQUEST, "Unknown form."));
            };
            match federation::complete(state, registry, client, back, now).await {
                Ok((new, cookie)) => {
                    end_previous(state, current.as_ref()).await?;
                    cookies.push(cookie);
                    session = Some(new);
                    signed_in_now = true;
                }
                Err(refusal) => return refused(refusal),
            }
        }
        Some("login") => match login(state, registry, client, form, now).await? {
            Login::Limited(wait) => {
                let mut page = login_page(form.get("username"), LoginFailure::TooMany);
                *page.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                if let Ok(value) = HeaderValue::from_str(&wait.to_string()) {
                    page.headers_mut().insert(header::RETRY_AFTER, value);
                }
                return Ok(page);
            }
            Login::Done(new, cookie) => {
                end_previous(state, current.as_ref()).await?;
                cookies.push(cookie);
                session = Some(*new);
                signed_in_now = true;
            }
            Login::Refused => {
                return Ok(login_page(form.get("username"), LoginFailure::Wrong));
            }
        },
        Some("consent") => match (form.get("decision"), &session) {
            (Some("allow"), Some(s)) => {
                let before = state
                    .store
                    .consent(&s.subject, &client.id)
                    .await
                    .map_err(OAuthError::from)?;
                let after = authorize::consented_after(before.as_deref(), request);
                state
                    .store
                    .put_consent(&s.subject, &client.id, &after)
                    .await
                    .map_err(OAuthError::from)?;
                consented_now = true;
            }
            (Some("deny"), _) => {
                return Err(Step::Client(OAuthError::AccessDenied(
                    "the user denied the request".into(),
                )));
            }
            _ => {
                return Err(Step::Page(
                    StatusCode::BAD_REQUEST,
                    "Your session has ended. Go back to the application and sign in again.",
                ));
            }
        },
        Some(_) => return Err(Step::Page(StatusCode::BAD_REQUEST, "Unknown form.")),
    }
    let view = session.as_ref().map(|s| SessionView {
        auth_time: s.auth_time,
        subject: &s.subject,
    });
    if !signed_in_now && authorize::needs_login(request, view, now)? {
        if login_forms(registry, client).is_empty() {
            return Err(Step::Page(
                StatusCode::SERVICE_UNAVAILABLE,
                "None of the identity providers of this application can sign you in here.",
            ));
        }
        return Ok(login_page(
            request.login_hint.as_deref(),
            LoginFailure::None,
        ));
    }
    let Some(session) = session else {
        return Err(Step::Page(StatusCode::BAD_REQUEST, "No session."));
    };
    if !consented_now {
        let consented = state
            .store
            .consent(&session.subject, &client.id)
            .await
            .map_err(OAuthError::from)?;
        if authorize::needs_consent(&client.sign_in, request, consented.as_deref())? {
            return Ok(pages::consent(
                &client.sign_in.branding,
                &session.subject,
                &request.consent_scopes(),
                &carried(params, &csrf, true),
            ));
        }
    }
    let authorization = authorization(registry, client, &session, request)?;
    let code = code::issue(state, request, authorization, now).await?;
    tracing::debug!(client_id = %client.id, sid = %session.sid, "authorization code issued");
    Ok(back_to_client(
        state,
        &request.redirect_uri,
        &[("code", &code)],
        request.state.as_deref(),
        post,
    ))
}

/// The providers of the client, as login forms (static) and buttons (oidc).
fn login_forms<'a>(registry: &'a Registry, client: &'a Client) -> Vec<LoginForm<'a>> {
    registry
        .identity_providers_of(client)
        .map(|p| LoginForm {
            provider_key: &p.key,
            provider_name: &p.display_name,
            upstream: matches!(p.kind, ProviderKind::Oidc(_)),
        })
        .collect()
}

/// The browser's session before a new sign-in ends: one at a time.
async fn end_previous(state: &AppState, previous: Option<&SsoSession>) -> Result<(), OAuthError> {
    if let Some(old) = previous {
        state.store.end_session(&old.sid).await?;
    }
    Ok(())
}

/// What a login form came to.
enum Login {
    /// Signed in: the new session and its cookie.
    Done(Box<SsoSession>, HeaderValue),
    Refused,
    /// Too many attempts for this user: seconds to wait.
    Limited(u64),
}

/// Checks the login form against the chosen static provider (argon2id on a
/// blocking thread), within the attempts a user is allowed.
async fn login(
    state: &AppState,
    registry: &Registry,
    client: &Client,
    form: &Form,
    now: u64,
) -> Result<Login, OAuthError> {
    let (Some(idp), Some(username), Some(password)) =
        (form.get("idp"), form.get("username"), form.get("password"))
    else {
        return Ok(Login::Refused);
    };
    let Some(provider) = registry
        .identity_providers_of(client)
        .find(|p| p.key == idp)
        .cloned()
    else {
        return Ok(Login::Refused);
    };
    if let Err(wait) = state
        .login_limit
        .take(&format!("{idp}\n{username}"), state.clock.instant())
    {
        tracing::info!(client_id = %client.id, idp, "sign-in refused: too many attempts for this user");
        return Ok(Login::Limited(wait.as_secs_f64().ceil() as u64));
    }
    let (user, pass) = (username.to_owned(), password.to_owned());
    let verified = tokio::task::spawn_blocking(move || match &provider.kind {
        ProviderKind::Static(users) => users.verify(&user, &pass).cloned(),
        _ => None,
    })
    .await
    .map_err(|_| OAuthError::Internal)?;
    let Some(user) = verified else {
        tracing::info!(client_id = %client.id, idp, "sign-in refused: wrong username or password");
        return Ok(Login::Refused);
    };
    let (session, cookie) =
        session::start(state, &user.username, idp, &["pwd"], &user.claims, now, now).await?;
    tracing::info!(client_id = %client.id, idp, sid = %session.sid, "user signed in");
    Ok(Login::Done(Box::new(session), cookie))
}

/// The grant a code carries: the session's user and the request's scopes
/// and claims; refused when the sign-in's `acr` misses an essential one.
fn authorization(
    registry: &Registry,
    client: &Client,
    session: &SsoSession,
    request: &AuthorizationRequest,
) -> Result<Authorization, OAuthError> {
    let amr: Vec<String> = session
        .amr
        .split(' ')
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect();
    let static_provider = registry
        .identity_providers_of(client)
        .any(|p| p.key == session.idp && matches!(p.kind, ProviderKind::Static(_)));
    let acr = claims::of_sign_in(static_provider, &amr);
    request.acr.check(acr.as_deref())?;
    authorize::check_subject(request, &session.subject)?;
    Ok(Authorization {
        grant_id: random_id().map_err(|_| OAuthError::Internal)?,
        client_id: request.client_id.clone(),
        subject: session.subject.clone(),
        scopes: request.scopes.clone(),
        audiences: request.audiences.clone(),
        sid: Some(session.sid.clone()),
        auth_time: session.auth_time,
        amr,
        acr,
        claims: serde_json::from_str(&session.claims).unwrap_or_default(),
        requested_claims: request.claims.clone(),
    })
}
