//! Leader election with a `coordination.k8s.io/v1` Lease, so two operator
//! replicas can run: one reconciles, the other waits to take over.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use kube::{Api, Client, api::PostParams};

/// How long a lease holds without renewal.
pub const LEASE_SECONDS: i32 = 15;
/// How often the holder renews (and a candidate retries).
pub const RENEW_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nobody holds it, or the holder let it expire: take it.
    Acquire,
    /// We hold it: renew.
    Renew,
    /// Someone else holds it.
    Wait,
}

/// What to do with `lease` as `me` at `now`.
pub fn decide(lease: Option<&Lease>, me: &str, now: Timestamp) -> Step {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return Step::Acquire;
    };
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == me => Step::Renew,
        None | Some("") => Step::Acquire,
        Some(_) => {
            let seconds = i64::from(spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS));
            let renewed = spec
                .renew_time
                .as_ref()
                .or(spec.acquire_time.as_ref())
                .map(|t| t.0);
            match renewed {
                Some(at) if at + SignedDuration::from_secs(seconds) > now => Step::Wait,
                _ => Step::Acquire,
            }
        }
    }
}

pub struct Elector {
    api: Api<Lease>,
    name: String,
    me: String,
}

impl Elector {
    pub fn new(client: Client, namespace: &str, name: &str, me: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            me: me.into(),
        }
    }

    /// One round: true when this replica leads afterwards. Conflicts (another
    /// replica wrote first) count as not leading.
    pub async fn try_lead(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.name).await?;
        let step = decide(current.as_ref(), &self.me, now);
        if step == Step::Wait {
            return Ok(false);
        }
        let previous = current.as_ref().and_then(|l| l.spec.as_ref());
        let transitions = previous.and_then(|s| s.lease_transitions).unwrap_or(0);
        let spec = LeaseSpec {
            holder_identity: Some(self.me.clone()),
            lease_duration_seconds: Some(LEASE_SECONDS),
            acquire_time: match step {
                Step::Renew => previous.and_then(|s| s.acquire_time.clone()),
                _ => Some(MicroTime(now)),
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(if step == Step::Acquire && current.is_some() {
                transitions + 1
            } else {
                transitions
            }),
            ..Default::default()
        };
        let result = match current {
            Some(mut lease) => {
                lease.spec = Some(spec);
                // resourceVersion makes this a compare-and-swap.
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(spec),
                };
                self.api
                    .create(&PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
        };
        match result {
            Ok(()) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(err) => Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed: Timestamp) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(LEASE_SECONDS),
                renew_time: Some(MicroTime(renewed)),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn one_leader_at_a_time_and_takeover_after_expiry() {
        let now = Timestamp::now();
        assert_eq!(decide(None, "a", now), Step::Acquire);
        assert_eq!(decide(Some(&lease("a", now)), "a", now), Step::Renew);
        assert_eq!(decide(Some(&lease("a", now)), "b", now), Step::Wait);
        let stale = now - SignedDuration::from_secs(i64::from(LEASE_SECONDS) + 1);
        assert_eq!(decide(Some(&lease("a", stale)), "b", now), Step::Acquire);
        assert_eq!(decide(Some(&lease("", now)), "b", now), Step::Acquire);
    }
}
