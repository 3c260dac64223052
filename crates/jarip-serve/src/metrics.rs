//! Prometheus metrics in the text exposition format, named after vLLM's (`vllm:` becomes
//! `jarip:`) so that dashboards built for it read these with a prefix change: counters end in
//! `_total`, latencies are histograms in seconds, and every series carries `model_name`.
//!
//! Hand-written rather than a metrics crate: a dozen series, atomics for the hot counters and a
//! mutex per histogram (observed once per token at most, far below contention).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const TTFT_BUCKETS: &[f64] =
    &[0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0];
const ITL_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
];
const REQUEST_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0,
];

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge that only the scheduler sets.
#[derive(Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

pub struct Histogram {
    bounds: &'static [f64],
    /// Per-bucket counts (not cumulative; the last one is +Inf), sum of observations.
    state: Mutex<(Vec<u64>, f64)>,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, state: Mutex::new((vec![0; bounds.len() + 1], 0.0)) }
    }

    pub fn observe(&self, d: Duration) {
        let x = d.as_secs_f64();
        let i = self.bounds.iter().position(|&b| x <= b).unwrap_or(self.bounds.len());
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.0[i] += 1;
        s.1 += x;
    }

    pub fn count(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0.iter().sum()
    }
}

/// Every series the server exposes.
pub struct Metrics {
    model: String,
    pub prompt_tokens: Counter,
    /// Prompt tokens whose keys and values came from the prefix cache instead of a prefill.
    pub prefix_cache_hit_tokens: Counter,
    /// Bytes the prefix cache holds.
    pub prefix_cache_bytes: Gauge,
    pub generation_tokens: Counter,
    pub requests_cancelled: Counter,
    pub requests_timed_out: Counter,
    /// Forward passes, and the sequences they carried (their ratio is the mean batch size).
    pub engine_steps: Counter,
    pub engine_step_sequences: Counter,
    pub running: Gauge,
    pub waiting: Gauge,
    pub ttft: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
    pub queue: Histogram,
    success: Mutex<BTreeMap<&'static str, u64>>,
    errors: Mutex<BTreeMap<u16, u64>>,
}

impl Metrics {
    pub fn new(model: &str) -> Self {
        Self {
            model: model.to_string(),
            prompt_tokens: Counter::default(),
            prefix_cache_hit_tokens: Counter::default(),
            prefix_cache_bytes: Gauge::default(),
            generation_tokens: Counter::default(),
            requests_cancelled: Counter::default(),
            requests_timed_out: Counter::default(),
            engine_steps: Counter::default(),
            engine_step_sequences: Counter::default(),
            running: Gauge::default(),
            waiting: Gauge::default(),
            ttft: Histogram::new(TTFT_BUCKETS),
            itl: Histogram::new(ITL_BUCKETS),
            e2e: Histogram::new(REQUEST_BUCKETS),
            queue: Histogram::new(REQUEST_BUCKETS),
            success: Mutex::new(BTreeMap::new()),
            errors: Mutex::new(BTreeMap::new()),
        }
    }

    /// A request answered in full; `reason` is its (first) choice's finish reason.
    pub fn request_succeeded(&self, reason: &'static str) {
        *self.success.lock().unwrap_or_else(|p| p.into_inner()).entry(reason).or_default() += 1;
    }

    /// A request answered with an error status.
    pub fn request_failed(&self, status: u16) {
        *self.errors.lock().unwrap_or_else(|p| p.into_inner()).entry(status).or_default() += 1;
    }

    /// The text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let label = format!("model_name=\"{}\"", escape(&self.model));
        let mut out = String::new();
        let mut scalar = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{{label}}} {v}\n");
        };
        scalar("jarip:num_requests_running", "gauge", "Sequences in the running batch.", self.running.get());
        scalar(
            "jarip:num_requests_waiting",
            "gauge",
            "Sequences waiting for a place in the batch.",
            self.waiting.get(),
        );
        scalar("jarip:prompt_tokens_total", "counter", "Prompt tokens admitted.", self.prompt_tokens.get());
        scalar(
            "jarip:prefix_cache_hit_tokens_total",
            "counter",
            "Prompt tokens served from the prefix cache (not prefilled again).",
            self.prefix_cache_hit_tokens.get(),
        );
        scalar(
            "jarip:prefix_cache_bytes",
            "gauge",
            "Bytes of keys and values the prefix cache holds.",
            self.prefix_cache_bytes.get(),
        );
        scalar("jarip:generation_tokens_total", "counter", "Tokens generated.", self.generation_tokens.get());
        scalar(
            "jarip:request_cancelled_total",
            "counter",
            "Requests abandoned before their end (client went away).",
            self.requests_cancelled.get(),
        );
        scalar(
            "jarip:request_timeout_total",
            "counter",
            "Requests stopped by the per-request timeout.",
            self.requests_timed_out.get(),
        );
        scalar("jarip:engine_steps_total", "counter", "Forward passes of the batch.", self.engine_steps.get());
        scalar(
            "jarip:engine_step_sequences_total",
            "counter",
            "Sequences carried by forward passes (divided by engine_steps_total: the mean batch size).",
            self.engine_step_sequences.get(),
        );

        let name = "jarip:request_success_total";
        let _ = write!(out, "# HELP {name} Requests answered in full, by finish reason.\n# TYPE {name} counter\n");
        let success = self.success.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for reason in ["stop", "length"] {
            let v = success.get(reason).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}{{{label},finished_reason=\"{reason}\"}} {v}");
        }
        let name = "jarip:request_errors_total";
        let _ = write!(out, "# HELP {name} Requests answered with an error, by HTTP status.\n# TYPE {name} counter\n");
        for (status, v) in self.errors.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(out, "{name}{{{label},status=\"{status}\"}} {v}");
        }

        for (name, help, h) in [
            ("jarip:time_to_first_token_seconds", "Time from arrival to the first generated token.", &self.ttft),
            ("jarip:inter_token_latency_seconds", "Time between consecutive generated tokens.", &self.itl),
            ("jarip:e2e_request_latency_seconds", "Time from arrival to the end of the response.", &self.e2e),
            ("jarip:request_queue_time_seconds", "Time from arrival to joining the running batch.", &self.queue),
        ] {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} histogram\n");
            let (counts, sum) = h.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let mut cumulative = 0;
            for (i, c) in counts.iter().enumerate() {
                cumulative += c;
                let le = h.bounds.get(i).map_or("+Inf".to_string(), |b| b.to_string());
                let _ = writeln!(out, "{name}_bucket{{{label},le=\"{le}\"}} {cumulative}");
            }
            let _ = writeln!(out, "{name}_sum{{{label}}} {sum}");
            let _ = writeln!(out, "{name}_count{{{label}}} {cumulative}");
        }
        out
    }
}

/// Label values escape backslash, double quote and newline.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_format_is_well_formed() {
        let m = Metrics::new("my \"model\"\n");
        m.generation_tokens.add(5);
        m.ttft.observe(Duration::from_millis(30));
        m.ttft.observe(Duration::from_secs(1000));
        m.request_succeeded("stop");
        m.request_failed(429);
        let text = m.render();
        assert!(text.contains(r#"jarip:generation_tokens_total{model_name="my \"model\"\n"} 5"#), "{text}");
        assert!(text.contains(r#"jarip:time_to_first_token_seconds_bucket{model_name="my \"model\"\n",le="0.04"} 1"#));
        assert!(text.contains(r#"le="+Inf"} 2"#));
        assert!(text.contains(r#"jarip:time_to_first_token_seconds_count{model_name="my \"model\"\n"} 2"#));
        assert!(text.contains(r#"finished_reason="stop"} 1"#));
        assert!(text.contains(r#"status="429"} 1"#));
        // Every sample line is `name{labels} value` with a numeric value.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            assert!(series.starts_with("jarip:") && series.ends_with('}'), "{line}");
        }
        for counter in text.lines().filter(|l| l.starts_with("# TYPE") && l.ends_with("counter")) {
            assert!(counter.split(' ').nth(2).unwrap().ends_with("_total"), "{counter}");
        }
    }
}
