//! What a domain's published TLS policy (MTA-STS) means for one attempt of mail routed by its
//! MX records: the MX hosts it may go to, whether verified TLS is required, and the policy its
//! sessions are counted under for the domain's TLS report. A REQUIRETLS message needs an
//! enforced policy here (RFC 8689 4.2.1: the MX records must be authenticated).

use super::runner::Runner;
use crate::delivery::dane_lookup::DaneRoute;
use crate::delivery::mta_sts::{Mode, Policy};
use crate::delivery::route::Target;
use crate::delivery::tls_rpt::{PolicyKey, ResultType};
use crate::metrics as m;
use crate::smtp::client::RcptOutcome;
use crate::smtp::reply::{Enhanced, Reply};
use crate::spool::Envelope;

/// The attempt under the domain's policy.
pub(super) struct MxPolicy {
    /// The MX hosts the policy allows, in their order.
    pub targets: Vec<Target>,
    /// An MTA-STS policy in enforce mode: TLS verified for the MX name.
    pub enforced: bool,
    /// An MTA-STS policy in testing mode: delivered as before.
    pub testing: bool,
    /// DANE authenticates some of the MX hosts (those whose targets carry TLSA records).
    pub dane: bool,
    /// The policy sessions are counted under for TLS-RPT.
    pub reporting: Option<PolicyKey>,
    /// The policy found (enforce or testing): a session to an MX host it does not allow is a
    /// failure in the report. None where DANE applies (it is reported under the TLSA policy).
    pub published: Option<Policy>,
}

impl Runner {
    /// The attempt's MX hosts and TLS under the policy `domain` publishes, or the outcome
    /// for every recipient when there is none to make (REQUIRETLS without an enforced policy
    /// fails, or waits while the policy cannot be had; an enforced policy that allows none of
    /// the MX hosts defers).
    pub(super) async fn mx_policy(&self, env: &Envelope, domain: &str, targets: Vec<Target>) -> Result<MxPolicy, RcptOutcome> {
        let key_domain = crate::dns::ascii_domain(domain).unwrap_or_else(|| domain.to_ascii_lowercase());
        // Not reported: sessions a local setting or the sender's TLS-Required: No decides
        // (reports among them: RFC 8460 3 wants them sent despite TLS failures, and not counted).
        let reported = !env.params.tls_optional && !self.delivery().tls_configured(domain);
        let (targets, dane) = match reported {
            true => self.dane(env, domain, &key_domain, targets).await?,
            false => (targets, false),
        };
        let (published, unknown) = self.mta_sts(env, domain, &key_domain).await;
        let reporting = reported.then(|| match dane {
            true => crate::tlsrpt::collect::dane_policy_key(&key_domain, &targets),
            false => crate::tlsrpt::collect::policy_key(&key_domain, published.as_ref()),
        });
        let (enforced, testing) = match &published {
            Some(p) => (p.mode == Mode::Enforce, p.mode == Mode::Testing),
            None => (false, false),
        };
        if dane {
            // DANE wins (RFC 8461 2): the hosts it authenticates stay, whatever an MTA-STS
            // policy says of them; the others only as that policy allows, and never for
            // REQUIRETLS mail, which needs an authenticated route. MX preference holds.
            metrics::counter!(m::DELIVERY_TLS_POLICY, "policy" => "dane").increment(1);
            let allowed = |t: &Target| {
                t.dane.is_some() || (!env.params.requiretls && published.as_ref().is_none_or(|p| !enforced || p.allows(&t.host)))
            };
            let targets: Vec<Target> = targets.into_iter().filter(allowed).collect();
            return Ok(MxPolicy { targets, enforced, testing: false, dane: true, reporting, published: None });
        }
        if env.params.requiretls && !enforced {
            if unknown {
                let text = format!("REQUIRETLS: the MTA-STS policy of {domain} cannot be had now");
                return Err(RcptOutcome::Deferred(Reply::new(451, Enhanced(4, 7, 30), text)));
            }
            let reply = Reply::new(
                550,
                Enhanced(5, 7, 30),
                format!("REQUIRETLS support required: no authenticated route to {domain} (no MTA-STS policy in enforce mode)"),
            );
            return Err(RcptOutcome::Failed(reply));
        }
        let Some(policy) = published else { return Ok(MxPolicy { targets, enforced, testing, dane: false, reporting, published: None }) };
        let source = self.config().delivery.source_address;
        let refuse_each = |hosts: &[Target]| {
            let why = "the MX host is not one the MTA-STS policy allows";
            for t in hosts.iter().filter(|t| !policy.allows(&t.host)) {
                if let Some(key) = &reporting {
                    self.delivery().tls_reports().refused(key, ResultType::ValidationFailure, &t.host, Some(t.addr.ip()), why, source);
                }
            }
        };
        if testing {
            // Delivered all the same; the sessions to hosts outside the policy count as failures.
            if let Err(would) = crate::delivery::sts::enforce(&policy, domain, &targets) {
                metrics::counter!(m::DELIVERY_TLS_POLICY, "policy" => "mta-sts-testing-mismatch").increment(1);
                tracing::warn!(queue_id = %env.queue_id, domain, "MTA-STS testing mode, delivered all the same: {}", would.lines[0]);
            }
            return Ok(MxPolicy { targets, enforced, testing, dane: false, reporting, published: Some(policy) });
        }
        match crate::delivery::sts::enforce(&policy, domain, &targets) {
            Ok(allowed) => Ok(MxPolicy { targets: allowed, enforced, testing, dane: false, reporting, published: Some(policy) }),
            Err(reply) => {
                metrics::counter!(m::DELIVERY_TLS_POLICY, "policy" => "mta-sts-mismatch").increment(1);
                refuse_each(&targets);
                Err(RcptOutcome::Deferred(reply))
            }
        }
    }

    /// The targets under DANE (those it authenticates carry their TLSA records), and whether
    /// it authenticates any; or, when the DNSSEC lookups that decide it fail, the deferral.
    /// A host left out for a failed TLSA lookup is counted for the domain's TLS report.
    async fn dane(&self, env: &Envelope, domain: &str, key_domain: &str, targets: Vec<Target>) -> Result<(Vec<Target>, bool), RcptOutcome> {
        let delivery = self.delivery();
        let route = delivery.dane(domain, targets).await;
        let applies = route.applies();
        match route {
            DaneRoute::Unsigned(targets) => Ok((targets, false)),
            DaneRoute::Signed { targets, left_out } => {
                let key = crate::tlsrpt::collect::dane_policy_key(key_domain, &targets);
                let source = self.config().delivery.source_address;
                for (host, why) in &left_out {
                    tracing::warn!(queue_id = %env.queue_id, domain, host, "MX host left out: its TLSA records cannot be had: {why}");
                    delivery.tls_reports().refused(&key, ResultType::DnssecInvalid, host, None, why, source);
                }
                Ok((targets, applies))
            }
            DaneRoute::Defer(reply) => {
                metrics::counter!(m::DELIVERY_TLS_POLICY, "policy" => "dane-dnssec-failure").increment(1);
                tracing::warn!(queue_id = %env.queue_id, domain, "{}", reply.lines[0]);
                let key = crate::tlsrpt::collect::dane_policy_key(key_domain, &[]);
                let source = self.config().delivery.source_address;
                delivery.tls_reports().refused(&key, ResultType::DnssecInvalid, domain, None, &reply.lines[0], source);
                Err(RcptOutcome::Deferred(reply))
            }
        }
    }

    /// The MTA-STS policy (enforce or testing) for mail to `domain` by its MX records: none
    /// where `tls_policies` or a smarthost login decides, and none for a message sent with
    /// `TLS-Required: No` (RFC 8689 5: the sender asked to ignore such policies). With it,
    /// whether a policy may exist that could not be had. A policy that could not be fetched
    /// is counted for the domain's TLS report.
    async fn mta_sts(&self, env: &Envelope, domain: &str, key_domain: &str) -> (Option<Policy>, bool) {
        let delivery = self.delivery();
        if delivery.tls_configured(domain) {
            metrics::counter!(m::DELIVERY_TLS_POLICY, "policy" => "configured").increment(1);
            return (None, false);
        }
        let found = delivery.mta_sts(domain, self.clock.now()).await;
        if let Some(failure) = &found.failure {
            let key = crate::tlsrpt::collect::policy_key(key_domain, found.policy.as_ref());
            let source = self.config().delivery.source_address;
            let reason = failure.to_string();
            delivery.tls_reports().refused(&key, failure.result_type(), &format!("mta-sts.{key_domain}"), None, &reason, source);
        }
        let unknown = found.unknown;
        let Some(policy) = found.policy else { return (None, unknown) };
        match policy.mode {
            Mode::Enforce if env.params.tls_optional => {
                tracing::info!(queue_id = %env.queue_id, domain, "MTA-STS policy not enforced: TLS-Required: No");
                (None, false)
            }
            Mode::Enforce => {
                metrics::counter!(m::DELIVERY_TLS_POLICY, "policy" => "mta-sts-enforce").increment(1);
                (Some(policy), false)
            }
            Mode::Testing => {
                metrics::counter!(m::DELIVERY_TLS_POLICY, "policy" => "mta-sts-testing").increment(1);
                (Some(policy), false)
            }
            Mode::None => (None, false),
        }
    }
}
