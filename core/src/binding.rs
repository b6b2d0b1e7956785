//! Proof of possession in the domain: what a new token is bound to, and
//! whether a presented bound token comes from its holder. The proofs
//! themselves (a DPoP proof, a client certificate) are checked at the edges;
//! the domain sees what they proved, as a [`Confirmation`].

use tokenmesh_crds::TokenBinding;
use tokenmesh_tokens::claims::{AccessTokenClaims, Confirmation};

use crate::{error::OAuthError, registry::Client};

/// The keys the caller of this request proved it holds (`jkt`: a verified
/// DPoP proof's key). Empty: a bearer request.
pub type Holder = Confirmation;

/// The `cnf` of a token issued to `client` for a caller holding `holder`:
/// bound to the DPoP key the caller proved (RFC 9449 §6), refused when the
/// client's `accessToken.binding: dpop` asks for a proof that did not come.
pub fn bind(client: &Client, holder: &Holder) -> Result<Option<Confirmation>, OAuthError> {
    if client.binding == TokenBinding::Dpop && holder.jkt.is_none() {
        tracing::debug!(client_id = %client.id, "token refused: DPoP-bound client sent no proof");
        return Err(OAuthError::InvalidDpopProof(
            "this client's tokens are DPoP-bound: send a DPoP proof".into(),
        ));
    }
    Ok(holder.jkt.as_ref().map(|jkt| Confirmation {
        jkt: Some(jkt.clone()),
        x5t_s256: None,
    }))
}

/// One `cnf` from a certificate binding and a DPoP binding: a token can
/// carry both (`x5t#S256` and `jkt`), and every one present must be proved.
pub fn combine(a: Option<Confirmation>, b: Option<Confirmation>) -> Option<Confirmation> {
    match (a, b) {
        (None, one) | (one, None) => one,
        (Some(a), Some(b)) => Some(Confirmation {
            x5t_s256: a.x5t_s256.or(b.x5t_s256),
            jkt: a.jkt.or(b.jkt),
        }),
    }
}

/// A presented token (`subject_token`, `actor_token`) bound to a DPoP key is
/// accepted only from a caller who proved that key.
pub fn check_holder(
    cnf: Option<&Confirmation>,
    holder: &Holder,
    name: &'static str,
) -> Result<(), OAuthError> {
    let Some(jkt) = cnf.and_then(|cnf| cnf.jkt.as_deref()) else {
        return Ok(());
    };
    if holder.jkt.as_deref() == Some(jkt) {
        return Ok(());
    }
    tracing::debug!(
        parameter = name,
        proved = holder.jkt.is_some(),
        "exchange refused: a DPoP-bound token from a caller without its key"
    );
    Err(OAuthError::InvalidGrant(
        format!("the {name} is DPoP-bound: send a DPoP proof of its key").into(),
    ))
}

/// A DPoP-bound `subject_token` in an exchange. Its holder may exchange it
/// with a proof of its key. Another client may present it as the actor
/// (RFC 8693 §1.1: the actor presents the subject's token): the service the
/// token was sent to, whose sidecar checked the holder's proof when the token
/// came in (RFC 9449 §7), and which never holds that key. Such an actor must
/// be bound itself (`bound_to_caller`: it proved a key of its own, or
/// presented its certificate), so that the new token is bound too: a bound
/// chain never turns into a bearer token. The token's own client must prove
/// the key: holding the client's credential without the key is the theft
/// DPoP defends against. Which actors may present which tokens at all is the
/// ExchangePolicy's `from` and `actor`, decided next.
/// Who may go on to present a subject token, after [`check_subject`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectHolder {
    /// Bearer, or presented by the holder of its key: any actor a policy admits.
    Holder,
    /// Bound to a key the caller does not hold: only an actor an
    /// ExchangePolicy names (`actor.clients` or `actor.serviceAccounts`; a
    /// policy open to any client is not enough), so a stolen bound token
    /// cannot be laundered into a token bound to the thief's key.
    NamedActorOnly,
}

pub fn check_subject(
    subject: &AccessTokenClaims,
    holder: &Holder,
    caller: &str,
    bound_to_caller: bool,
) -> Result<SubjectHolder, OAuthError> {
    let Some(jkt) = subject.cnf.as_ref().and_then(|cnf| cnf.jkt.as_deref()) else {
        return Ok(SubjectHolder::Holder);
    };
    if holder.jkt.as_deref() == Some(jkt) {
        return Ok(SubjectHolder::Holder);
    }
    if subject.client_id == caller {
        check_holder(subject.cnf.as_ref(), holder, "subject_token")?;
        return Ok(SubjectHolder::Holder);
    }
    if bound_to_caller {
        tracing::debug!(client_id = %caller, subject_jti = %subject.jti, "a DPoP-bound subject token presented by an actor bound to a key of its own");
        return Ok(SubjectHolder::NamedActorOnly);
    }
    tracing::debug!(client_id = %caller, subject_jti = %subject.jti, "exchange refused: a DPoP-bound subject token from an actor that proved no key");
    Err(OAuthError::InvalidGrant(
        "the subject_token is DPoP-bound: an actor presenting it must send a DPoP proof of a key of its own, so that the new token stays bound".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{client, registry, scopes};

    fn holder(jkt: Option<&str>) -> Holder {
        Confirmation {
            jkt: jkt.map(str::to_owned),
            x5t_s256: None,
        }
    }

    #[test]
    fn a_dpop_client_needs_a_proof_and_any_proof_binds() {
        let reg = registry(
            &(scopes()
                + &client("dpop", "orders", "  accessToken: {binding: dpop}\n")
                + &client("bearer", "orders", "")),
        );
        let dpop = reg.client("dpop").unwrap();
        assert!(matches!(
            bind(dpop, &holder(None)),
            Err(OAuthError::InvalidDpopProof(_))
        ));
        assert_eq!(
            bind(dpop, &holder(Some("k1")))
                .unwrap()
                .unwrap()
                .jkt
                .as_deref(),
            Some("k1")
        );
        let bearer = reg.client("bearer").unwrap();
        assert_eq!(bind(bearer, &holder(None)).unwrap(), None);
        assert_eq!(
            bind(bearer, &holder(Some("k2")))
                .unwrap()
                .unwrap()
                .jkt
                .as_deref(),
            Some("k2"),
            "a proof binds the token whatever the client's setting"
        );
    }

    #[test]
    fn a_certificate_and_a_dpop_binding_combine() {
        let x5t = Confirmation {
            x5t_s256: Some("t".into()),
            jkt: None,
        };
        let jkt = holder(Some("k"));
        assert_eq!(combine(None, None), None);
        assert_eq!(combine(Some(x5t.clone()), None), Some(x5t.clone()));
        assert_eq!(
            combine(Some(x5t), Some(jkt)),
            Some(Confirmation {
                x5t_s256: Some("t".into()),
                jkt: Some("k".into())
            })
        );
    }

    #[test]
    fn a_bound_token_needs_its_own_key() {
        let cnf = holder(Some("k1"));
        assert!(check_holder(Some(&cnf), &holder(Some("k1")), "subject_token").is_ok());
        for other in [None, Some("k2")] {
            assert!(matches!(
                check_holder(Some(&cnf), &holder(other), "subject_token"),
                Err(OAuthError::InvalidGrant(_))
            ));
        }
        assert!(check_holder(None, &holder(None), "subject_token").is_ok());
    }
}
