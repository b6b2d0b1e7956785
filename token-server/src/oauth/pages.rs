//! The pages people see: sign-in, consent, errors and sign-out. Small
//! server-rendered HTML with inline CSS, branded per client, no script;
//! every value is escaped, and the headers forbid framing and caching.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Response},
};
use tokenmesh_core::registry::Branding;

/// Escapes text for HTML element content and quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A `#rrggbb` colour, or the default: nothing else reaches the style.
fn colour<'a>(value: Option<&'a str>, default: &'a str) -> &'a str {
    match value {
        Some(c)
            if c.len() == 7
                && c.starts_with('#')
                && c.bytes().skip(1).all(|b| b.is_ascii_hexdigit()) =>
        {
            c
        }
        _ => default,
    }
}

const CSS: &str = "*{box-sizing:border-box}
body{margin:0;min-height:100vh;display:flex;align-items:center;justify-content:center;background:var(--bg);font:16px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;color:#1f2933}
main{width:100%;max-width:400px;margin:24px;padding:32px;background:#fff;border-radius:12px;box-shadow:0 1px 3px rgba(0,0,0,.08),0 8px 24px rgba(0,0,0,.08)}
header{text-align:center;margin-bottom:24px}
header img{max-height:48px;max-width:160px;margin-bottom:12px}
h1{font-size:1.35rem;margin:0 0 4px}
p.sub{margin:0;color:#52606d;font-size:.95rem}
label{display:block;font-weight:600;font-size:.9rem;margin:16px 0 6px}
input[type=text],input[type=password]{width:100%;padding:10px 12px;border:1px solid #cbd2d9;border-radius:8px;font-size:1rem}
input:focus,button:focus{outline:3px solid color-mix(in srgb,var(--primary) 40%,transparent);outline-offset:1px;border-color:var(--primary)}
button{width:100%;margin-top:24px;padding:11px;border:0;border-radius:8px;background:var(--primary);color:#fff;font-size:1rem;font-weight:600;cursor:pointer}
button.secondary{margin-top:10px;background:#fff;color:#3e4c59;border:1px solid #cbd2d9}
.error{margin:0 0 16px;padding:10px 12px;border-radius:8px;background:#fde8e8;color:#9b1c1c;font-size:.93rem}
ul.scopes{list-style:none;padding:0;margin:16px 0 0}
ul.scopes li{padding:10px 0;border-bottom:1px solid #e4e7eb}
ul.scopes li:last-child{border-bottom:0}
.provider{margin-top:24px;padding-top:8px;border-top:1px solid #e4e7eb}
.provider.upstream{margin-top:12px;padding-top:0;border-top:0}
.provider:first-of-type{border-top:0;padding-top:0;margin-top:0}
.provider.upstream button{margin-top:0;font-weight:600}
h2{font-size:1rem;margin:8px 0 0;color:#3e4c59}
footer{margin-top:24px;text-align:center;color:#9aa5b1;font-size:.8rem}";

/// A complete page: `title`, the client's branding, and `body` (HTML).
pub fn page(status: StatusCode, title: &str, branding: Option<&Branding>, body: &str) -> Response {
    let primary = colour(branding.and_then(|b| b.primary_color.as_deref()), "#2f5bea");
    let background = colour(
        branding.and_then(|b| b.background_color.as_deref()),
        "#f4f6fa",
    );
    let logo = branding
        .and_then(|b| b.logo_url.as_deref())
        .filter(|u| u.starts_with("https://"))
        .map(|u| format!("<img src=\"{}\" alt=\"\">", escape(u)))
        .unwrap_or_default();
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<title>{title}</title><style>:root{{--primary:{primary};--bg:{background}}}{CSS}</style></head>\
<body><main><header>{logo}{body}<footer>Secured by tokenmesh</footer></main></body></html>",
        title = escape(title),
    );
    let mut response = (status, Html(html)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src https:; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// Hidden inputs carrying the authorization request through a form.
pub fn hidden(fields: &[(&str, String)]) -> String {
    fields
        .iter()
        .map(|(name, value)| {
            format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                escape(name),
                escape(value)
            )
        })
        .collect()
}

/// An error the user sees (the client or redirect URI could not be trusted).
pub fn error(status: StatusCode, message: &str) -> Response {
    page(
        status,
        "Sign-in error",
        None,
        &format!(
            "<h1>We could not sign you in</h1></header><p class=\"error\" role=\"alert\">{}</p>\
<p class=\"sub\">Go back to the application and try again. If this goes on, tell its administrator.</p>",
            escape(message)
        ),
    )
}

/// A provider on the login page: a username/password form (static), or a
/// button that goes to the upstream (oidc).
pub struct LoginForm<'a> {
    pub provider_key: &'a str,
    pub provider_name: &'a str,
    pub upstream: bool,
}

/// Why the login page is shown again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginFailure<'a> {
    None,
    Wrong,
    TooMany,
    /// The upstream provider of this name could not sign the user in.
    Upstream(&'a str),
}

/// The sign-in page: one username/password form per static provider, one
/// button per upstream provider, each posting back with the request.
pub fn login(
    branding: &Branding,
    forms: &[LoginForm<'_>],
    carried: &str,
    login_hint: Option<&str>,
    failure: LoginFailure<'_>,
) -> Response {
    let name = escape(&branding.display_name);
    let alert = match failure {
        LoginFailure::None => String::new(),
        LoginFailure::Wrong => {
            "<p class=\"error\" role=\"alert\">The username or password is not right.</p>".into()
        }
        LoginFailure::TooMany => {
            "<p class=\"error\" role=\"alert\">Too many attempts. Wait a moment, then try again.</p>".into()
        }
        LoginFailure::Upstream(provider) => format!(
            "<p class=\"error\" role=\"alert\">{} could not sign you in just now. Try again in a moment.</p>",
            escape(provider)
        ),
    };
    let passwords = forms.iter().filter(|f| !f.upstream).count();
    let mut first = true;
    let forms: String = forms
        .iter()
        .enumerate()
        .map(|(i, form)| {
            let key = escape(form.provider_key);
            let provider = escape(form.provider_name);
            if form.upstream {
                return format!(
                    "<form class=\"provider upstream\" method=\"post\" action=\"/oauth2/authorize\">{carried}\
<input type=\"hidden\" name=\"action\" value=\"upstream\">\
<input type=\"hidden\" name=\"idp\" value=\"{key}\">\
<button type=\"submit\" class=\"secondary\">Continue with {provider}</button></form>"
                );
            }
            let heading = if passwords > 1 || passwords < forms.len() {
                format!("<h2>{provider}</h2>")
            } else {
                String::new()
            };
            let focus = if std::mem::take(&mut first) {
                " autofocus"
            } else {
                ""
            };
            format!(
                "<form class=\"provider\" method=\"post\" action=\"/oauth2/authorize\">{heading}{carried}\
<input type=\"hidden\" name=\"action\" value=\"login\">\
<input type=\"hidden\" name=\"idp\" value=\"{key}\">\
<label for=\"username-{i}\">Username</label>\
<input type=\"text\" id=\"username-{i}\" name=\"username\" autocomplete=\"username\" autocapitalize=\"none\" spellcheck=\"false\" required value=\"{hint}\"{focus}>\
<label for=\"password-{i}\">Password</label>\
<input type=\"password\" id=\"password-{i}\" name=\"password\" autocomplete=\"current-password\" required>\
<button type=\"submit\">Sign in</button></form>",
                hint = escape(login_hint.unwrap_or("")),
            )
        })
        .collect();
    let status = match failure {
        LoginFailure::None => StatusCode::OK,
        LoginFailure::Upstream(_) => StatusCode::BAD_GATEWAY,
        LoginFailure::Wrong | LoginFailure::TooMany => StatusCode::UNAUTHORIZED,
    };
    page(
        status,
        &format!("Sign in to {}", branding.display_name),
        Some(branding),
        &format!(
            "<h1>Sign in</h1><p class=\"sub\">to continue to {name}</p></header>{alert}{forms}"
        ),
    )
}

/// What a scope lets the client do, in words.
fn describe(scope: &str) -> String {
    match scope {
        "openid" => "Know who you are".into(),
        "profile" => "See your name and profile details".into(),
        "email" => "See your email address".into(),
        "address" => "See your postal address".into(),
        "phone" => "See your phone number".into(),
        "offline_access" => "Keep access while you are away".into(),
        other => format!("Use “{other}” on your behalf"),
    }
}

/// The consent page: the scopes in words, allow or deny.
pub fn consent(branding: &Branding, user: &str, scopes: &[String], carried: &str) -> Response {
    let name = escape(&branding.display_name);
    let items: String = scopes
        .iter()
        .map(|s| format!("<li>{}</li>", escape(&describe(s))))
        .collect();
    page(
        StatusCode::OK,
        &format!("Allow {}?", branding.display_name),
        Some(branding),
        &format!(
            "<h1>{name} wants to</h1><p class=\"sub\">Signed in as {user}</p></header>\
<ul class=\"scopes\">{items}</ul>\
<form method=\"post\" action=\"/oauth2/authorize\">{carried}<input type=\"hidden\" name=\"action\" value=\"consent\">\
<button type=\"submit\" name=\"decision\" value=\"allow\" autofocus>Allow</button>\
<button type=\"submit\" class=\"secondary\" name=\"decision\" value=\"deny\">Deny</button></form>",
            user = escape(user),
        ),
    )
}

/// After RP-initiated logout without a place to return to.
pub fn signed_out() -> Response {
    page(
        StatusCode::OK,
        "Signed out",
        None,
        "<h1>You are signed out</h1></header><p class=\"sub\">You can close this window.</p>",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_and_only_hex_colours_reach_the_style() {
        assert_eq!(
            escape("\"><script>'&"),
            "&quot;&gt;&lt;script&gt;&#39;&amp;"
        );
        assert_eq!(colour(Some("#12abEF"), "#000000"), "#12abEF");
        assert_eq!(colour(Some("red;}body{"), "#000000"), "#000000");
        assert_eq!(
            hidden(&[("state", "a\"b".into())]),
            "<input type=\"hidden\" name=\"state\" value=\"a&quot;b\">"
        );
    }
}
