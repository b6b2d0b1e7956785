//! Leader election with a `coordination.k8s.io/v1` Lease, so two operator
//! replicas can run: one reconciles, the other waits to take over.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use kube::{Api, Client, api::PostParams};
use tokenmesh_tokens::clock::SharedClock;

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
    clock: SharedClock,
}

impl Elector {
    pub fn new(client: Client, namespace: &str, name: &str, me: &str, clock: SharedClock) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            me: me.into(),
            clock,
        }
    }

    /// One round: true when this replica leads afterwards. Conflicts (another
    /// replica wrote first) count as not leading.
    pub async fn try_lead(&self) -> Result<bool, kube::Error> {
        // Every time a clock gives is within jiff's range (years -9999 to 9999).
        let now = Timestamp::try_from(self.clock.now()).unwrap_or(Timestamp::UNIX_EPOCH);
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

/// Why this replica stopped leading. It stops at once (Kubernetes restarts
/// it as a candidate): another replica may be reconciling already.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LeaseLost {
    #[error("leadership lost to another replica")]
    Taken,
    #[error("the lease was not renewed within {0:?}; another replica may lead")]
    NotRenewed(Duration),
}

/// Renews the lease every `renew_every` while this replica leads; returns
/// when it no longer does. Failed renewals are retried until `lease` has
/// passed since the last one that worked.
pub async fn keep_leading<F, R, E>(
    mut try_lead: F,
    renew_every: Duration,
    lease: Duration,
) -> LeaseLost
where
    F: FnMut() -> R,
    R: Future<Output = Result<bool, E>>,
    E: std::fmt::Display,
{
    // The lease's own timer, not domain time.
    let mut renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(renew_every).await;
        if renewed.elapsed() >= lease {
            return LeaseLost::NotRenewed(lease);
        }
        match try_lead().await {
            Ok(true) => renewed = tokio::time::Instant::now(),
            Ok(false) => return LeaseLost::Taken,
            Err(err) => tracing::warn!(error = %err, "lease renewal failed"),
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
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        assert_eq!(decide(None, "a", now), Step::Acquire);
        assert_eq!(decide(Some(&lease("a", now)), "a", now), Step::Renew);
        assert_eq!(decide(Some(&lease("a", now)), "b", now), Step::Wait);
        let stale = now - SignedDuration::from_secs(i64::from(LEASE_SECONDS) + 1);
        assert_eq!(decide(Some(&lease("a", stale)), "b", now), Step::Acquire);
        assert_eq!(decide(Some(&lease("", now)), "b", now), Step::Acquire);
    }
}

#[cfg(test)]
mod lease_tests {
    use super::*;

    /// It used to `std::process::exit(1)` from inside its task: now the
    /// caller gets the reason and `main` reports it once.
    #[tokio::test]
    async fn a_lease_taken_by_another_replica_ends_leading_with_an_error() {
        let mut calls = 0;
        let lost = keep_leading(
            || {
                calls += 1;
                std::future::ready(Ok::<_, String>(calls < 3))
            },
            Duration::from_millis(1),
            Duration::from_secs(3600),
        )
        .await;
        assert_eq!(lost, LeaseLost::Taken);
        assert_eq!(calls, 3, "renewed twice, then lost");
    }

    #[tokio::test]
    async fn renewals_that_keep_failing_end_leading_once_the_lease_ran_out() {
        let lease = Duration::from_millis(1);
        let lost = keep_leading(
            || std::future::ready(Err::<bool, _>("the API server is down")),
            Duration::from_millis(1),
            lease,
        )
        .await;
        assert_eq!(lost, LeaseLost::NotRenewed(lease));
    }
}

#[cfg(test)]
mod elector_tests {
    use http::Method;
    use tokenmesh_tokens::clock::ManualClock;

    use super::*;
    use crate::fixtures::{api_server, expect_status};

    const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases";

    /// The lease is dated by the operator's clock, like everything else the
    /// operator decides by time.
    #[tokio::test]
    async fn a_new_lease_is_acquired_at_the_injected_clocks_time() {
        let (client, mut api) = api_server();
        let clock = ManualClock::at_unix(1_800_000_000);
        let elector = Elector::new(client, "ops", "tokenmesh-operator", "replica-a", clock);
        let task = tokio::spawn(async move { elector.try_lead().await });
        let not_found = serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "not found", "reason": "NotFound", "code": 404
        });
        let lease = format!("{LEASES}/tokenmesh-operator");
        expect_status(&mut api, Method::GET, &lease, 404, not_found).await;
        let created = expect_status(
            &mut api,
            Method::POST,
            LEASES,
            201,
            serde_json::json!({"metadata": {"name": "tokenmesh-operator"}}),
        )
        .await;
        assert_eq!(created["spec"]["holderIdentity"], "replica-a");
        assert_eq!(created["spec"]["renewTime"], "2027-01-15T08:00:00.000000Z");
        assert_eq!(created["spec"]["acquireTime"], created["spec"]["renewTime"]);
        assert!(task.await.unwrap().unwrap(), "it leads");
    }
}
