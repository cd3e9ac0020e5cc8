//! [`OrgRateLimit`]: per-organization request rates by plan.
//!
//! The layer sits behind [`ApiKeyAuth`](crate::ApiKeyAuth) and reads the [`Principal`] it
//! inserted. For each request:
//!
//! 1. no `Principal` → `500 auth_layer_missing` and an error log (fail closed: the layer is in
//!    front of `ApiKeyAuth` by mistake);
//! 2. the organization's quota comes from its plan through the [`QuotaPolicy`] (default: the
//!    plan's table below, [`Plan::quota`]; enterprise plans carry their own [`Quota`]). The store
//!    returns the organization's *current* plan with every key lookup, so a plan change applies
//!    on its next request, with the cells already spent carried over ([`Gcra::convert`]);
//! 3. the request's cost: a [`Cost`] request extension if an outer layer set one, else the
//!    layer's [cost function](OrgRateLimitLayer::cost), else 1;
//! 4. the [`RateLimitBackend`] decides with the GCRA ([`gcra`]), keyed by the **organization
//!    id**, never by a key;
//! 5. admitted: the inner service is called and its response gets `X-RateLimit-Limit`,
//!    `X-RateLimit-Remaining` and `X-RateLimit-Reset` (Unix seconds). Refused: `429` with the
//!    same headers, `Retry-After` (whole seconds, rounded up, never 0) and a problem+json body
//!    with `code: "rate_limited"`; a gRPC request gets status 8 `RESOURCE_EXHAUSTED` with the
//!    same figures as metadata. Optionally, the IETF draft fields `RateLimit-Policy` and
//!    `RateLimit` too ([`draft_headers`](OrgRateLimitLayer::draft_headers)).
//!
//! | plan | requests | burst | refill | concurrent sessions |
//! |---|---|---|---|---|
//! | Free | 100 / minute | 100 | one per 600 ms | 10 |
//! | Paid | 1,000 / minute | 1,000 | one per 60 ms | 100 |
//! | Enterprise | custom | = requests | period / requests | custom |
//!
//! See [`gcra`] for the exact admission contract ("a burst of N, then an even refill").
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use axum::{Router, body::Body, extract::{Path, Request, State}, routing::{delete, post}};
//! use tower_api_key::{ApiKeyAuth, MemoryStore, OrgRateLimit, Principal, SessionError, SessionQuota};
//!
//! // A refused acquire is `429 session_limit_exceeded` with `Retry-After` (problem+json).
//! async fn create_session(
//!     State(sessions): State<SessionQuota>, p: Principal,
//! ) -> Result<String, SessionError> {
//!     let id = "sess_123"; // the id your service gives the new session
//!     let lease = sessions.acquire(&p, id, Duration::from_secs(300)).await?;
//!     Ok(format!("created {}", lease.session_id()))
//! }
//!
//! async fn delete_session(
//!     State(sessions): State<SessionQuota>, Path(id): Path<String>, p: Principal,
//! ) -> Result<&'static str, SessionError> {
//!     sessions.release(p.org_id(), &id).await?;
//!     Ok("deleted")
//! }
//!
//! let store = MemoryStore::new();
//! let app: Router = Router::new()
//!     .route("/v1/sessions", post(create_session))
//!     .route("/v1/sessions/{id}", delete(delete_session))
//!     .with_state(SessionQuota::new())
//!     // The last layer added runs first: ApiKeyAuth, then the rate limit.
//!     .layer(OrgRateLimit::new())
//!     .layer(ApiKeyAuth::new(store));
//! ```
//!
//! With a custom policy, a per-route cost and the draft headers:
//!
//! ```
//! use http::Method;
//! use tower_api_key::{OrgRateLimit, Plan, Quota};
//! use tower_api_key::rate_limit::QuotaPolicy;
//!
//! let layer = OrgRateLimit::new()
//!     // Every plan gets twice its request rate; sessions unchanged.
//!     .policy(QuotaPolicy::new(|p| {
//!         let q = p.plan().quota();
//!         Quota { requests: q.requests * 2, ..q }
//!     }))
//!     // Creating a browser session counts as 5 requests.
//!     .cost(|method, uri| if method == Method::POST && uri.path() == "/v1/browsers" { 5 } else { 1 })
//!     .draft_headers(true);
//! # let _ = layer;
//! ```

mod addr;
mod backend;
mod future;
pub mod gcra;
mod memory;
pub mod policies;
#[cfg(feature = "redis")]
pub mod redis;
mod throttle;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Uri};
use tower_layer::Layer;
use tower_service::Service;

pub use addr::AddrRateLimit;
pub(crate) use addr::client_of;
pub use backend::{
    CheckResult, PoliciesCheck, PoliciesResult, RateLimitBackend, RateLimitError, Spend,
};
pub(crate) use future::Check;
pub use future::ResponseFuture;
pub use gcra::{Decision, Decisions, Gcra, decide_all};
pub use memory::MemoryRateLimiter;
pub use policies::{Policies, PoliciesBuilder, PolicyError, PolicyName, RatePolicy, SessionPolicy};

pub use crate::headers::{
    RATELIMIT, RATELIMIT_POLICY, RateLimitInfo, X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING,
    X_RATELIMIT_RESET,
};

use crate::clock::{Clock, Timestamp};
use crate::future::{inner_accessors, poll_now, take_ready};
use crate::headers::{DraftFields, DraftItem, LimitHeaders, Refund};
use crate::observe::UsageUnit;
use crate::plan::{Plan, Quota};
use crate::principal::Principal;
use crate::reject::{Rejection, Responder, ResponseBody, missing_principal};
use crate::store::{UsageMeter, UsageOutcome};

const FREE: Gcra = Gcra::from_quota(&Plan::Free.quota());
const PAID: Gcra = Gcra::from_quota(&Plan::Paid.quota());

/// Which limits an organization gets. Cheap to clone.
///
/// The default, [`QuotaPolicy::by_plan`], is the plan's own quota ([`Plan::quota`]): the
/// table for Free and Paid, the negotiated quota an enterprise plan carries, as one request
/// policy named after the plan. Replace it with [`QuotaPolicy::new`] to compute one quota
/// otherwise (a promotion, an override table), or with [`QuotaPolicy::policies`] to give
/// organizations several named limits at once ([`Policies`]: a burst beside a per-minute
/// rate and a daily cap). The policy runs on every request, so keep it cheap; it sees the
/// organization's current plan.
#[derive(Clone, Default)]
pub struct QuotaPolicy(Source);

#[derive(Clone, Default)]
enum Source {
    #[default]
    ByPlan,
    Quota(Arc<PolicyFn>),
    Policies(Arc<PoliciesFn>),
}

type PolicyFn = dyn Fn(&Principal) -> Quota + Send + Sync;
type PoliciesFn = dyn Fn(&Principal) -> Arc<Policies> + Send + Sync;

impl fmt::Debug for QuotaPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Source::ByPlan => "QuotaPolicy::by_plan",
            Source::Quota(_) => "QuotaPolicy::custom",
            Source::Policies(_) => "QuotaPolicy::policies",
        })
    }
}

/// The request policies chosen for one request.
#[derive(Clone, Debug)]
pub(crate) enum Selected {
    /// One policy named after the plan: the default plans' path, one atomic word per org.
    One(Gcra),
    /// Several named policies, decided together.
    Many(Arc<Policies>),
}

impl QuotaPolicy {
    /// Each organization gets its plan's [`Quota`].
    pub fn by_plan() -> Self {
        Self(Source::ByPlan)
    }

    /// A custom quota: one request policy (named after the plan) and a session limit.
    pub fn new(policy: impl Fn(&Principal) -> Quota + Send + Sync + 'static) -> Self {
        Self(Source::Quota(Arc::new(policy)))
    }

    /// Several named policies per organization. Build each plan's [`Policies`] once and hand
    /// out clones of its `Arc`: this runs on every request.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use tower_api_key::rate_limit::{Policies, QuotaPolicy};
    ///
    /// let burst_and_minute = Arc::new(
    ///     Policies::builder()
    ///         .requests("burst", 10, Duration::from_secs(1))
    ///         .requests("minute", 100, Duration::from_secs(60))
    ///         .build()
    ///         .expect("valid policies"),
    /// );
    /// let policy = QuotaPolicy::policies(move |_principal| burst_and_minute.clone());
    /// # let _ = policy;
    /// ```
    pub fn policies(
        policies: impl Fn(&Principal) -> Arc<Policies> + Send + Sync + 'static,
    ) -> Self {
        Self(Source::Policies(Arc::new(policies)))
    }

    /// The quota of `principal`'s organization. With [`policies`](Self::policies): its first
    /// request policy, and its session policy (the plan's sessions if it has none).
    pub fn quota(&self, principal: &Principal) -> Quota {
        match &self.0 {
            Source::ByPlan => principal.plan().quota(),
            Source::Quota(f) => f(principal),
            Source::Policies(f) => {
                let set = f(principal);
                let plan = principal.plan().quota();
                let first = set.rates().first().map(|r| *r.gcra());
                Quota {
                    requests: first.map_or(plan.requests, |g| {
                        u32::try_from(g.limit()).unwrap_or(u32::MAX)
                    }),
                    period: first.map_or(plan.period, |g| g.period()),
                    concurrent_sessions: set
                        .sessions()
                        .map_or(plan.concurrent_sessions, |s| s.limit()),
                }
            }
        }
    }

    /// The concurrent sessions `principal`'s organization may hold (what
    /// [`SessionQuota`](crate::SessionQuota) enforces).
    pub fn concurrent_sessions(&self, principal: &Principal) -> u32 {
        self.quota(principal).concurrent_sessions
    }

    /// The request-rate GCRA of `principal`'s organization (precomputed for Free and Paid);
    /// with [`policies`](Self::policies), its first request policy's.
    #[inline]
    pub fn gcra(&self, principal: &Principal) -> Gcra {
        match &self.0 {
            Source::ByPlan => match principal.plan() {
                Plan::Free => FREE,
                Plan::Paid => PAID,
                Plan::Enterprise(q) => Gcra::from_quota(&q),
            },
            Source::Quota(f) => Gcra::from_quota(&f(principal)),
            Source::Policies(_) => Gcra::from_quota(&self.quota(principal)),
        }
    }

    /// The policies of `principal`'s organization as named sets (one policy per plan unless
    /// built with [`policies`](Self::policies)).
    pub fn named(&self, principal: &Principal) -> Arc<Policies> {
        match &self.0 {
            Source::Policies(f) => f(principal),
            _ => Arc::new(Policies::single(
                principal.plan().name(),
                self.gcra(principal),
                Some(self.concurrent_sessions(principal)),
            )),
        }
    }

    /// The policies deciding a request of `principal`.
    #[inline]
    pub(crate) fn select(&self, principal: &Principal) -> Selected {
        match &self.0 {
            Source::Policies(f) => Selected::Many(f(principal)),
            _ => Selected::One(self.gcra(principal)),
        }
    }
}

/// How many cells a request costs, as a request extension. Set it in a layer *outside*
/// [`OrgRateLimit`] (e.g. a `map_request` keyed on the route) to make an expensive call count
/// as several requests; it wins over the layer's [cost function](OrgRateLimitLayer::cost).
/// `Cost(0)` makes a request free (it still gets the headers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cost(pub u32);

/// What [`OrgRateLimit`] does when its backend fails (e.g. Redis unreachable).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnBackendError {
    /// Refuse the request with `503` + `Retry-After` (`auth_unavailable`; gRPC 14). The default:
    /// a broken limiter must not silently lift every limit.
    #[default]
    FailClosed,
    /// Decide with the backend's [fallback](RateLimitBackend::fallback) instead, and log a
    /// warning: the Redis backend falls back to a local, per-replica limiter (admitted
    /// requests get its headers, and it can refuse with `429`); a backend without a fallback
    /// lets the request through without rate-limit headers.
    FailOpen,
}

type CostFn = dyn Fn(&Method, &Uri) -> u32 + Send + Sync;
type CheckOnlyFn = dyn Fn(&Method, &Uri) -> bool + Send + Sync;

#[derive(Clone)]
pub(crate) struct Limiter<B> {
    backend: B,
    policy: QuotaPolicy,
    clock: Clock,
    responder: Responder,
    cost: Option<Arc<CostFn>>,
    check_only: Option<Arc<CheckOnlyFn>>,
    refund: bool,
    draft_headers: bool,
    on_error: OnBackendError,
    unavailable_retry_after: u64,
    /// Backend failures are logged at most once a second.
    error_log: throttle::LogThrottle,
    /// Counts refusals by key when usage metering is on.
    meter: UsageMeter,
    /// Told when an organization's use crosses a level.
    observe: Option<crate::observe::Observe>,
    /// Decisions by plan and result, for telemetry.
    counts: Arc<LimitCounts>,
}

/// The `plan` label of the rate-limit counters, by index.
pub(crate) const PLANS: [&str; 3] = ["free", "paid", "enterprise"];
/// The `result` label of the rate-limit counters, by index: admitted, refused (429), no
/// decision because the backend failed.
pub(crate) const LIMIT_RESULTS: [&str; 3] = ["accepted", "refused", "error"];

/// Rate-limit decisions by plan and result: plain atomics, read by
/// [`Telemetry`](crate::telemetry).
#[derive(Debug, Default)]
pub(crate) struct LimitCounts {
    pub(crate) by_plan: [[std::sync::atomic::AtomicU64; LIMIT_RESULTS.len()]; PLANS.len()],
}

impl LimitCounts {
    #[inline]
    fn add(&self, principal: Option<&Principal>, result: usize) {
        let plan = match principal.map(Principal::plan) {
            Some(Plan::Paid) => 1,
            Some(Plan::Enterprise(_)) => 2,
            _ => 0,
        };
        self.by_plan[plan][result].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What a backend check was asked, kept for the fallback when it fails.
#[derive(Clone, Debug)]
pub(crate) struct CheckArgs {
    pub(crate) selected: Selected,
    pub(crate) cost: u32,
    pub(crate) now: Timestamp,
    pub(crate) spend: Spend,
}

/// What the IETF fields need besides the decision, known before it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DraftSpec {
    now_secs: u64,
    /// The plan's name: the name of a [`Selected::One`] policy.
    plan: &'static str,
    /// The concurrent sessions of a [`Selected::One`] organization.
    sessions: u32,
}

/// The check of one request: one policy (the backend's own future) or several.
pub(crate) enum LimitCheck<C> {
    One(C),
    Many(PoliciesCheck),
}

/// What a [`LimitCheck`] answers.
pub(crate) enum Answer {
    One(CheckResult),
    Many(PoliciesResult),
}

impl<C: Future<Output = CheckResult> + Unpin> Future for LimitCheck<C> {
    type Output = Answer;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        match self.get_mut() {
            LimitCheck::One(c) => Pin::new(c).poll(cx).map(Answer::One),
            LimitCheck::Many(c) => Pin::new(c).poll(cx).map(Answer::Many),
        }
    }
}

/// A decision as the client sees it: admitted or not, the figures, the IETF fields.
struct Verdict {
    allowed: bool,
    info: RateLimitInfo,
    draft: Option<Box<DraftFields>>,
}

/// What to do with a request once the backend answered.
pub(crate) enum Outcome {
    /// Call the inner service; add these headers to its response.
    Admit(Option<LimitHeaders>),
    /// Answer with this refusal.
    Refuse(Response<Bytes>),
}

impl<B> Limiter<B> {
    /// The clock the limiter reads.
    pub(crate) fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Report the usage levels an admitted single-policy decision crossed (if observed). Out
    /// of line: the admission path stays small enough to inline.
    #[inline(never)]
    fn observe_one(&self, principal: Option<&Principal>, args: &CheckArgs, d: &Decision) {
        if let (Some(observe), Some(p), Selected::One(gcra)) =
            (&self.observe, principal, &args.selected)
        {
            observe.usage(
                p.org_id(),
                p.plan().name(),
                UsageUnit::Requests,
                d.info.limit,
                d.info.remaining,
                u64::from(args.cost),
                gcra.period(),
                args.now,
            );
        }
    }

    /// Decisions by plan and result.
    #[allow(dead_code)] // read by `Telemetry` (feature `metrics`)
    pub(crate) fn counts(&self) -> &Arc<LimitCounts> {
        &self.counts
    }

    /// Count refusals with `meter` (the stack gives its recorder's, unless one is set).
    pub(crate) fn set_meter_if_off(&mut self, meter: &UsageMeter) {
        if !self.meter.is_on() {
            self.meter = meter.clone();
        }
    }

    /// Report usage levels to `observe` (the stack gives its own, unless one is set).
    pub(crate) fn set_observe_if_off(&mut self, observe: &crate::observe::Observe) {
        if self.observe.is_none() {
            self.observe = Some(observe.clone());
        }
    }
}

/// `t` of the IETF `RateLimit` field for one policy: for a policy that refused the request,
/// when it admits it again (so `Retry-After` is never earlier); otherwise the seconds until
/// its allowance is whole again.
fn effective_window(d: &Decision, now_secs: u64) -> u64 {
    if d.allowed {
        d.info.reset.saturating_sub(now_secs)
    } else {
        d.info.retry_after.max(1)
    }
}

impl<B: RateLimitBackend> Limiter<B> {
    /// Start the check of a request by `principal` at `now`: its policies, its cost, the draft
    /// fields' inputs if enabled, and the backend's check (not yet polled). Shared by
    /// [`OrgRateLimit`] and [`ApiKeyStack`](crate::ApiKeyStack).
    #[inline]
    pub(crate) fn begin<ReqBody>(
        &self,
        principal: &Principal,
        req: &Request<ReqBody>,
        now: Timestamp,
    ) -> (LimitCheck<B::Check>, CheckArgs, Option<DraftSpec>) {
        let mut selected = self.policy.select(principal);
        let cost = match req.extensions().get::<Cost>() {
            Some(c) => c.0,
            None => self.cost.as_ref().map_or(1, |f| f(req.method(), req.uri())),
        };
        let spend = match &self.check_only {
            Some(f) if f(req.method(), req.uri()) => Spend::DryRun,
            _ => Spend::Commit,
        };
        let draft = self.draft_headers.then(|| self.draft_spec(principal, now));
        let org = principal.org_id();
        let check = match (&selected, spend) {
            (Selected::One(gcra), Spend::Commit) => {
                LimitCheck::One(self.backend.check(org, gcra, cost, now))
            }
            (Selected::One(_), Spend::DryRun) => {
                // A check-only request goes through the several-policy check, which can
                // decide without writing.
                let set = self.policy.named(principal);
                let check = self.backend.check_policies(org, &set, cost, now, spend);
                selected = Selected::Many(set);
                LimitCheck::Many(check)
            }
            (Selected::Many(set), _) => {
                LimitCheck::Many(self.backend.check_policies(org, set, cost, now, spend))
            }
        };
        let args = CheckArgs {
            selected,
            cost,
            now,
            spend,
        };
        (check, args, draft)
    }

    #[inline(never)]
    fn draft_spec(&self, principal: &Principal, now: Timestamp) -> DraftSpec {
        DraftSpec {
            now_secs: now.as_unix_secs(),
            plan: principal.plan().name(),
            sessions: self.policy.concurrent_sessions(principal),
        }
    }

    /// Turn a backend answer into the figures to add, or a rendered refusal. An admission by
    /// one policy without the IETF fields, the common case, is decided inline; everything
    /// else (several policies, the IETF fields, refusals, backend errors) goes to
    /// [`outcome_slow`](Self::outcome_slow). Always inlined: out of line, moving the answer in
    /// and out costs some 60 instructions per request.
    #[inline(always)]
    pub(crate) fn outcome(
        &self,
        result: Answer,
        principal: Option<&Principal>,
        args: &CheckArgs,
        draft: Option<DraftSpec>,
        request_headers: &HeaderMap,
    ) -> Outcome {
        match result {
            Answer::One(Ok(d)) if d.allowed && draft.is_none() && !self.refund => {
                self.counts.add(principal, 0);
                if self.observe.is_some() {
                    self.observe_one(principal, args, &d);
                }
                Outcome::Admit(Some(LimitHeaders {
                    info: Some(d.info),
                    draft: None,
                    refund: None,
                }))
            }
            other => self.outcome_slow(other, principal, args, draft, request_headers),
        }
    }

    #[inline(never)]
    fn outcome_slow(
        &self,
        result: Answer,
        principal: Option<&Principal>,
        args: &CheckArgs,
        draft: Option<DraftSpec>,
        request_headers: &HeaderMap,
    ) -> Outcome {
        let decisions = match result {
            Answer::One(Ok(d)) => {
                let gcra = match &args.selected {
                    Selected::One(g) => *g,
                    Selected::Many(_) => Gcra::new(0, Duration::ZERO),
                };
                let plan = draft.map_or_else(
                    || principal.map_or("requests", |p| p.plan().name()),
                    |s| s.plan,
                );
                let fields = draft.and_then(|spec| {
                    DraftFields::render(&[
                        DraftItem {
                            name: plan,
                            quota: gcra.limit(),
                            window: Some(gcra.period().as_secs()),
                            unit: None,
                            state: Some((d.info.remaining, effective_window(&d, spec.now_secs))),
                        },
                        DraftItem {
                            name: "sessions",
                            quota: u64::from(spec.sessions),
                            window: None,
                            unit: Some("concurrent-requests"),
                            state: None,
                        },
                    ])
                });
                if d.allowed {
                    self.observe_one(principal, args, &d);
                }
                let verdict = Verdict {
                    allowed: d.allowed,
                    info: d.info,
                    draft: fields,
                };
                return self.decided(
                    verdict,
                    || vec![plan.to_owned()],
                    principal,
                    args,
                    request_headers,
                );
            }
            Answer::Many(Ok(ds)) => ds,
            Answer::One(Err(error)) | Answer::Many(Err(error)) => {
                return self.failed(error, principal, args, draft, request_headers);
            }
        };
        let Selected::Many(set) = &args.selected else {
            return self.failed(
                RateLimitError::unavailable("several decisions for one policy"),
                principal,
                args,
                draft,
                request_headers,
            );
        };
        let fields = draft.and_then(|spec| {
            let mut items: Vec<DraftItem<'_>> = set
                .rates()
                .iter()
                .zip(decisions.each())
                .map(|(p, d)| DraftItem {
                    name: p.name().as_str(),
                    quota: p.gcra().limit(),
                    window: Some(p.gcra().period().as_secs()),
                    unit: None,
                    state: Some((d.info.remaining, effective_window(d, spec.now_secs))),
                })
                .collect();
            if let Some(s) = set.sessions() {
                items.push(DraftItem {
                    name: s.name().as_str(),
                    quota: u64::from(s.limit()),
                    window: None,
                    unit: Some("concurrent-requests"),
                    state: None,
                });
            }
            DraftFields::render(&items)
        });
        let violated = || {
            set.rates()
                .iter()
                .zip(decisions.each())
                .filter(|(_, d)| !d.allowed)
                .map(|(p, _)| p.name().as_str().to_owned())
                .collect()
        };
        if let (Some(observe), Some(p), true, Spend::Commit) =
            (&self.observe, principal, decisions.allowed(), args.spend)
        {
            for (policy, d) in set.rates().iter().zip(decisions.each()) {
                observe.usage(
                    p.org_id(),
                    policy.name().as_str(),
                    UsageUnit::Requests,
                    d.info.limit,
                    d.info.remaining,
                    u64::from(args.cost),
                    policy.gcra().period(),
                    args.now,
                );
            }
        }
        let verdict = Verdict {
            allowed: decisions.allowed(),
            info: decisions.info(),
            draft: fields,
        };
        self.decided(verdict, violated, principal, args, request_headers)
    }

    /// An admission with its headers (and its refund, if the layer refunds server errors), or
    /// a `429` naming the violated policies.
    fn decided(
        &self,
        verdict: Verdict,
        violated: impl FnOnce() -> Vec<String>,
        principal: Option<&Principal>,
        args: &CheckArgs,
        request_headers: &HeaderMap,
    ) -> Outcome {
        let Verdict {
            allowed,
            info,
            draft,
        } = verdict;
        let org = principal.map(|p| p.org_id().as_str()).unwrap_or_default();
        let mut headers = LimitHeaders {
            info: Some(info),
            draft,
            refund: None,
        };
        self.counts.add(principal, if allowed { 0 } else { 1 });
        if allowed {
            if self.refund && args.spend == Spend::Commit && args.cost > 0 {
                headers.refund = principal.map(|p| self.refund_of(p, args));
            }
            return Outcome::Admit(Some(headers));
        }
        let violated = violated();
        tracing::debug!(
            org_id = org,
            limit = info.limit,
            retry_after = info.retry_after,
            violated = ?violated,
            "rate limit exceeded"
        );
        if let Some(p) = principal {
            self.meter.count(p.record(), UsageOutcome::RateLimited);
        }
        let mut res = self
            .responder
            .respond(&Rejection::RateLimited { info, violated }, request_headers);
        // The responder wrote X-RateLimit-* and Retry-After; add the draft fields.
        if headers.draft.is_some() {
            headers.write(res.headers_mut());
        }
        Outcome::Refuse(res)
    }

    /// What gives a request's cells back if its inner service fails.
    fn refund_of(&self, principal: &Principal, args: &CheckArgs) -> Refund {
        let backend = self.backend.clone();
        let org = principal.org_id().clone();
        let gcras: Vec<Gcra> = match &args.selected {
            Selected::One(g) => vec![*g],
            Selected::Many(set) => set.rates().iter().map(|r| *r.gcra()).collect(),
        };
        let (cost, now, clock) = (args.cost, args.now, self.clock.clone());
        Refund(Box::new(move || {
            // The later of the decision's time and now: never refund into the past.
            let at = clock.now().max(now);
            tracing::debug!(org_id = %org, cost, "server error: rate-limit cells refunded");
            backend.refund(&org, &gcras, cost, at);
        }))
    }

    /// The backend failed: the layer's [`OnBackendError`] policy.
    fn failed(
        &self,
        error: RateLimitError,
        principal: Option<&Principal>,
        args: &CheckArgs,
        draft: Option<DraftSpec>,
        request_headers: &HeaderMap,
    ) -> Outcome {
        let org = principal.map(|p| p.org_id().as_str()).unwrap_or_default();
        match self.on_error {
            OnBackendError::FailOpen => {
                let fallback = principal.and_then(|p| match &args.selected {
                    Selected::One(g) => self
                        .backend
                        .fallback(p.org_id(), g, args.cost, args.now)
                        .map(|d| Answer::One(Ok(d))),
                    Selected::Many(set) => self
                        .backend
                        .fallback_policies(p.org_id(), set, args.cost, args.now, args.spend)
                        .map(|d| Answer::Many(Ok(d))),
                });
                if let Some(held_back) = self.error_log.admit(args.now) {
                    tracing::warn!(
                        %error,
                        org_id = org,
                        held_back,
                        local = fallback.is_some(),
                        "rate-limit backend failed; failing open"
                    );
                }
                match fallback {
                    Some(answer) => self.outcome(answer, principal, args, draft, request_headers),
                    None => {
                        self.counts.add(principal, 2);
                        Outcome::Admit(None)
                    }
                }
            }
            OnBackendError::FailClosed => {
                if let Some(held_back) = self.error_log.admit(args.now) {
                    tracing::warn!(
                        %error,
                        org_id = org,
                        held_back,
                        "rate-limit backend failed; answering 503"
                    );
                }
                self.counts.add(principal, 2);
                // An open breaker knows when it will try again; otherwise the layer's default.
                let retry_after = match &error {
                    RateLimitError::CircuitOpen(refused) => refused.retry_after_secs(),
                    _ => self.unavailable_retry_after,
                };
                Outcome::Refuse(self.responder.respond(
                    &Rejection::StoreUnavailable { retry_after },
                    request_headers,
                ))
            }
        }
    }
}

/// Limits each organization's request rate by its plan. See the [module docs](self).
///
/// `OrgRateLimit::new()` builds the layer ([`OrgRateLimitLayer`]) with the in-memory backend;
/// [`OrgRateLimit::with_backend`] takes another (e.g. Redis, shared by replicas).
#[derive(Clone)]
pub struct OrgRateLimit<S, B = MemoryRateLimiter> {
    inner: S,
    shared: Arc<Limiter<B>>,
}

impl<S: fmt::Debug, B: fmt::Debug> fmt::Debug for OrgRateLimit<S, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OrgRateLimit")
            .field("inner", &self.inner)
            .field("backend", &self.shared.backend)
            .finish_non_exhaustive()
    }
}

impl OrgRateLimit<(), ()> {
    /// The layer with an in-memory backend and the defaults: quotas by plan, cost 1 per
    /// request, coarse clock, problem+json / gRPC refusals, no draft headers, fail closed.
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> OrgRateLimitLayer<MemoryRateLimiter> {
        OrgRateLimitLayer::new(MemoryRateLimiter::new())
    }

    /// The layer over another backend.
    pub fn with_backend<B: RateLimitBackend>(backend: B) -> OrgRateLimitLayer<B> {
        OrgRateLimitLayer::new(backend)
    }
}

/// Layer that adds [`OrgRateLimit`]. Cheap to clone; every clone, and every service it wraps,
/// shares the same backend state.
#[derive(Clone)]
pub struct OrgRateLimitLayer<B = MemoryRateLimiter> {
    shared: Arc<Limiter<B>>,
}

impl<B: fmt::Debug> fmt::Debug for OrgRateLimitLayer<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OrgRateLimitLayer")
            .field("backend", &self.shared.backend)
            .field("policy", &self.shared.policy)
            .field("clock", &self.shared.clock)
            .field("draft_headers", &self.shared.draft_headers)
            .field("on_error", &self.shared.on_error)
            .finish_non_exhaustive()
    }
}

impl<B: RateLimitBackend> OrgRateLimitLayer<B> {
    /// The layer over `backend`, with the defaults (see [`OrgRateLimit::new`]).
    pub(crate) fn new(backend: B) -> Self {
        Self {
            shared: Arc::new(Limiter {
                backend,
                policy: QuotaPolicy::default(),
                clock: Clock::default(),
                responder: Responder::default(),
                cost: None,
                check_only: None,
                refund: false,
                draft_headers: false,
                on_error: OnBackendError::default(),
                unavailable_retry_after: 1,
                error_log: throttle::LogThrottle::default(),
                meter: UsageMeter::new(None),
                observe: None,
                counts: Arc::default(),
            }),
        }
    }

    fn map(self, f: impl FnOnce(&mut Limiter<B>)) -> Self {
        let mut shared = Arc::unwrap_or_clone(self.shared);
        f(&mut shared);
        Self {
            shared: Arc::new(shared),
        }
    }

    /// Where each organization's quota comes from (default: [`QuotaPolicy::by_plan`]).
    pub fn policy(self, policy: QuotaPolicy) -> Self {
        self.map(|s| s.policy = policy)
    }

    /// The clock (default: [`Clock::coarse`]). Use the same one as `ApiKeyAuth`.
    pub fn clock(self, clock: Clock) -> Self {
        self.map(|s| s.clock = clock)
    }

    /// How refusals are rendered (default: problem+json / gRPC).
    pub fn responder(self, responder: Responder) -> Self {
        self.map(|s| s.responder = responder)
    }

    /// A request's cost by method and URI, when no [`Cost`] extension is set (default: 1).
    pub fn cost(self, cost: impl Fn(&Method, &Uri) -> u32 + Send + Sync + 'static) -> Self {
        let cost: Arc<CostFn> = Arc::new(cost);
        self.map(|s| s.cost = Some(cost))
    }

    /// Which requests only check the limits without spending them (default: none), by
    /// method and URI: for "can I start this job?" endpoints. Such a request gets the figures
    /// it would get, and a `429` if it would be refused; nothing is spent either way.
    ///
    /// ```
    /// use http::Method;
    /// use tower_api_key::OrgRateLimit;
    ///
    /// let layer = OrgRateLimit::new()
    ///     .check_only(|method, uri| method == Method::GET && uri.path() == "/v1/jobs/can-start");
    /// # let _ = layer;
    /// ```
    pub fn check_only(self, f: impl Fn(&Method, &Uri) -> bool + Send + Sync + 'static) -> Self {
        let f: Arc<CheckOnlyFn> = Arc::new(f);
        self.map(|s| s.check_only = Some(f))
    }

    /// Also send the IETF fields of draft-ietf-httpapi-ratelimit-headers-12 (default: off):
    /// `RateLimit-Policy` lists every policy (`q`, `w`, and `qu="concurrent-requests"` for
    /// sessions), `RateLimit` what is left of each request policy (`r`) and for how long
    /// (`t`: seconds until the allowance is whole again, or until a policy that refused
    /// admits again). With the default plans:
    /// `RateLimit-Policy: "free";q=100;w=60, "sessions";q=10;qu="concurrent-requests"` and
    /// `RateLimit: "free";r=99;t=1`.
    pub fn draft_headers(self, on: bool) -> Self {
        self.map(|s| s.draft_headers = on)
    }

    /// Give a request's cells back to every policy when the inner service answers with a
    /// server error (`5xx`), so failed calls do not count (default: off). The request was
    /// admitted under the limit as it stood; the refund applies when its response arrives.
    /// A request refunded costs nothing, but it did take its cells while it ran.
    pub fn refund_server_errors(self, on: bool) -> Self {
        self.map(|s| s.refund = on)
    }

    /// What to do when the backend fails (default: [`OnBackendError::FailClosed`]).
    pub fn on_backend_error(self, policy: OnBackendError) -> Self {
        self.map(|s| s.on_error = policy)
    }

    /// The `Retry-After` of the `503` sent when the backend fails closed (default 1 s).
    pub fn unavailable_retry_after(self, secs: u64) -> Self {
        self.map(|s| s.unavailable_retry_after = secs.max(1))
    }

    /// Count the requests it refuses per key, as usage (`rate_limited`), with the meter of a
    /// [`LastUsedRecorder`](crate::LastUsedRecorder) whose usage metering is on. Not needed
    /// inside an [`ApiKeyStack`](crate::ApiKeyStack), which uses its recorder's.
    ///
    /// ```
    /// use tower_api_key::{LastUsedRecorder, MemoryStore, OrgRateLimit};
    /// let recorder = LastUsedRecorder::new(MemoryStore::new()).meter_usage(true);
    /// let limit = OrgRateLimit::new().meter(recorder.usage_meter());
    /// # let _ = limit;
    /// ```
    pub fn meter(self, meter: UsageMeter) -> Self {
        self.map(|s| s.meter = meter)
    }

    /// Tell `observe` when an organization's use of a request policy crosses one of its
    /// levels (80, 90 and 100 % by default), from the remaining cells of the decision just
    /// made: no extra lookup, and no call at all unless a level is crossed. With feature
    /// `events`, [`Events::signals`](crate::events::Events::signals) turns the crossings into
    /// `usage_threshold` events, once per level and window.
    pub fn observe(self, observe: impl Into<crate::observe::Observe>) -> Self {
        let observe = observe.into();
        self.map(|s| s.observe = Some(observe))
    }

    /// The backend (e.g. to [`peek`](MemoryRateLimiter::peek) or sweep it).
    pub fn backend(&self) -> &B {
        &self.shared.backend
    }

    /// The quota policy.
    pub fn quota_policy(&self) -> &QuotaPolicy {
        &self.shared.policy
    }

    /// The configuration, for [`ApiKeyAuthLayer::rate_limit`](crate::ApiKeyAuthLayer::rate_limit).
    pub(crate) fn limiter(&self) -> &Limiter<B> {
        &self.shared
    }
}

impl<S, B> Layer<S> for OrgRateLimitLayer<B> {
    type Service = OrgRateLimit<S, B>;

    fn layer(&self, inner: S) -> Self::Service {
        OrgRateLimit {
            inner,
            shared: self.shared.clone(),
        }
    }
}

inner_accessors!(OrgRateLimit<S, B>);

impl<S, B, ReqBody, ResBody> Service<Request<ReqBody>> for OrgRateLimit<S, B>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    B: RateLimitBackend,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, B, ReqBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let limiter = &*self.shared;
        let Some(principal) = req.extensions().get::<Principal>() else {
            let headers = std::mem::take(req.headers_mut());
            return ResponseFuture::refused(missing_principal(
                "OrgRateLimit",
                &limiter.responder,
                headers,
            ));
        };
        let (mut check, args, draft) = limiter.begin(principal, &req, limiter.clock.now());
        match poll_now(&mut check) {
            Poll::Ready(result) => {
                match limiter.outcome(result, Some(principal), &args, draft, req.headers()) {
                    Outcome::Admit(headers) => ResponseFuture::inner(self.inner.call(req), headers),
                    Outcome::Refuse(res) => ResponseFuture::refused(res),
                }
            }
            Poll::Pending => {
                let inner = take_ready(&mut self.inner);
                ResponseFuture::waiting(Check::new(
                    check,
                    req,
                    inner,
                    self.shared.clone(),
                    args,
                    draft,
                ))
            }
        }
    }
}
