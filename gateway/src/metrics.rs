//! Every metric the gateway exports, in one place (`GET /metrics`, OpenMetrics text).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use warden_audit::AuditObserver;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route template (`/v1/audit/events`), never a concrete path with ids.
    pub route: String,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `allow`, `deny` or `error`.
    pub outcome: String,
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub step: String,
    /// `done` or `failed`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DetectionLabels {
    /// A dataset with a contract (a bounded set).
    pub dataset: String,
    /// `card_number` or `email`.
    pub detector: String,
    /// `refuse`, `tokenize` or `allow`.
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

/// `warden_erasure_next_due_seconds` when no request is open: a year.
const NOTHING_DUE: i64 = 365 * 86_400;

/// The erasure job states shown by `warden_erasure_open_requests` (zero when none).
const OPEN_STATES: &[&str] = &["pending", "running", "waiting", "held"];

/// The gateway's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Family<HttpLabels, Histogram, fn() -> Histogram>,
    pub decisions: Family<DecisionLabels, Counter>,
    pub rate_limited: Counter,
    pub audit_appends: Counter,
    pub audit_batches: Counter,
    pub audit_failures: Counter,
    pub audit_batch_seconds: Histogram,
    pub audit_sealed_seq: Gauge,
    pub detections_found: Family<DetectionLabels, Counter>,
    pub audit_chain_broken: Gauge,
    pub erasure_step_runs: Family<StepLabels, Counter>,
    pub erasure_open: Family<StateLabels, Gauge>,
    pub erasure_oldest_open_age: Gauge,
    pub erasure_next_due: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let http_requests = Family::<HttpLabels, Counter>::default();
        let http_duration =
            Family::<HttpLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram as fn() -> Histogram,
            );
        let decisions = Family::<DecisionLabels, Counter>::default();
        let rate_limited = Counter::default();
        let audit_appends = Counter::default();
        let audit_batches = Counter::default();
        let audit_failures = Counter::default();
        let audit_batch_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        let audit_sealed_seq = Gauge::default();
        let audit_chain_broken = Gauge::default();
        registry.register(
            "warden_http_requests",
            "HTTP requests by route, method and status",
            http_requests.clone(),
        );
        registry.register(
            "warden_http_request_duration_seconds",
            "HTTP request latency by route, method and status",
            http_duration.clone(),
        );
        registry.register(
            "warden_decisions",
            "Access decisions by outcome",
            decisions.clone(),
        );
        registry.register(
            "warden_rate_limited_requests",
            "Requests refused by the rate limiter (counted here, not audited one by one)",
            rate_limited.clone(),
        );
        registry.register(
            "warden_audit_appends",
            "Audit events committed",
            audit_appends.clone(),
        );
        registry.register(
            "warden_audit_batches",
            "Audit transactions committed (group commit)",
            audit_batches.clone(),
        );
        registry.register(
            "warden_audit_append_failures",
            "Audit events that could not be committed",
            audit_failures.clone(),
        );
        registry.register(
            "warden_audit_batch_duration_seconds",
            "Time to commit one audit batch",
            audit_batch_seconds.clone(),
        );
        registry.register(
            "warden_audit_sealed_seq",
            "Sequence number of the last audit head this gateway sealed or found sealed (never decreases unless the log was cut)",
            audit_sealed_seq.clone(),
        );
        registry.register(
            "warden_audit_chain_broken",
            "1 while the audit chain does not verify up to its head (the gateway is then not ready and records nothing), else 0",
            audit_chain_broken.clone(),
        );
        let detections_found = Family::<DetectionLabels, Counter>::default();
        registry.register(
            "warden_detections",
            "Card numbers and e-mail addresses found in the text of unclassified (public) fields, by dataset, detector and the contract's action",
            detections_found.clone(),
        );
        let erasure_step_runs = Family::<StepLabels, Counter>::default();
        let erasure_open = Family::<StateLabels, Gauge>::default();
        let erasure_oldest_open_age = Gauge::default();
        let erasure_next_due = Gauge::default();
        // Until the first reading of the jobs: nothing due (a zero would look due now).
        erasure_next_due.set(NOTHING_DUE);
        registry.register(
            "warden_erasure_steps",
            "Erasure job steps run, by step and outcome (failed steps are retried)",
            erasure_step_runs.clone(),
        );
        registry.register(
            "warden_erasure_open_requests",
            "Open erasure requests by state",
            erasure_open.clone(),
        );
        registry.register(
            "warden_erasure_oldest_open_age_seconds",
            "Age of the oldest open erasure request (0 when none)",
            erasure_oldest_open_age.clone(),
        );
        registry.register(
            "warden_erasure_next_due_seconds",
            "Seconds until the earliest open erasure request is due (negative: overdue; absent work: a year)",
            erasure_next_due.clone(),
        );
        Self {
            registry,
            erasure_step_runs,
            erasure_open,
            erasure_oldest_open_age,
            erasure_next_due,
            http_requests,
            http_duration,
            decisions,
            rate_limited,
            audit_appends,
            audit_batches,
            audit_failures,
            audit_batch_seconds,
            audit_sealed_seq,
            audit_chain_broken,
            detections_found,
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    pub fn decision(&self, outcome: warden_sdk::Decision) {
        self.decisions
            .get_or_create(&DecisionLabels {
                outcome: outcome.as_str().to_owned(),
            })
            .inc();
    }
}

impl Metrics {
    /// Counts what protection found in unclassified text.
    pub fn detections(&self, dataset: &str, found: &warden_policy::protect::Detections) {
        for ((detector, action), n) in found {
            self.detections_found
                .get_or_create(&DetectionLabels {
                    dataset: dataset.to_owned(),
                    detector: (*detector).to_owned(),
                    action: (*action).to_owned(),
                })
                .inc_by(*n);
        }
    }

    pub fn erasure_steps(&self, step: &str, outcome: &str) {
        self.erasure_step_runs
            .get_or_create(&StepLabels {
                step: step.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Sets the erasure gauges: open jobs by state, the oldest one's age and the time left
    /// to the earliest deadline (microseconds).
    pub fn erasure_gauges(
        &self,
        by_state: &std::collections::BTreeMap<String, i64>,
        oldest_age: Option<i64>,
        next_due: Option<i64>,
    ) {
        for s in OPEN_STATES {
            self.erasure_open
                .get_or_create(&StateLabels {
                    state: (*s).to_owned(),
                })
                .set(by_state.get(*s).copied().unwrap_or(0));
        }
        self.erasure_oldest_open_age
            .set(oldest_age.map_or(0, |a| a / 1_000_000));
        self.erasure_next_due
            .set(next_due.map_or(NOTHING_DUE, |d| d / 1_000_000));
    }
}

impl AuditObserver for Metrics {
    fn committed(&self, events: usize, seconds: f64) {
        self.audit_appends.inc_by(events as u64);
        self.audit_batches.inc();
        self.audit_batch_seconds.observe(seconds);
    }

    fn failed(&self, events: usize) {
        self.audit_failures.inc_by(events as u64);
    }

    fn sealed(&self, seq: u64) {
        self.audit_sealed_seq
            .set(i64::try_from(seq).unwrap_or(i64::MAX));
    }

    fn chain_broken(&self, reason: Option<&str>) {
        self.audit_chain_broken.set(i64::from(reason.is_some()));
    }
}
