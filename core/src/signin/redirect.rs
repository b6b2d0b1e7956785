//! Answers added to a redirect URI (the client's registered URIs are
//! matched by [`crate::registry::SignIn::allows_redirect`]).

use url::Url;

/// `redirect_uri` with `params` added to its query (RFC 6749 §4.1.2: the
/// registered query is kept).
pub fn with_params(redirect_uri: &str, params: &[(&str, &str)]) -> Option<String> {
    let mut url = Url::parse(redirect_uri).ok()?;
    {
        let mut query = url.query_pairs_mut();
        for (name, value) in params {
            query.append_pair(name, value);
        }
    }
    Some(url.into())
}

#[cfg(test)]
mod with_params_tests {
    #[test]
    fn keeps_the_registered_query_and_encodes() {
        assert_eq!(
            super::with_params(
                "https://app.example/cb?a=1",
                &[("code", "x y"), ("state", "&")]
            )
            .as_deref(),
            Some("https://app.example/cb?a=1&code=x+y&state=%26")
        );
    }
}
