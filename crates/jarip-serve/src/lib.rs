//! jarip-serve: a jarip model behind an OpenAI-compatible HTTP API (axum + tokio), with a
//! web chat page and Prometheus metrics. It owns everything between a socket and the
//! inference engine; the engine itself (sampling, stop strings, batched decode) is
//! `jarip-infer`'s.
//!
//! - [`api`]: request bodies → typed requests (strict types, unknown fields ignored) and the
//!   OpenAI error shape;
//! - [`scheduler`]: the thread that owns the batcher and runs the forward passes, admitting
//!   new sequences between steps (continuous batching) from a bounded queue;
//! - [`routes`]: the endpoints, authentication, streaming (server-sent events);
//! - [`metrics`]: vLLM-style Prometheus series;
//! - [`provenance`]: the model's origin (seed, tokenizer and data hashes, ledger) for `/info`;
//! - the web page, `web/index.html`, compiled into the binary.

#![forbid(unsafe_code)]

pub mod api;
pub mod metrics;
pub mod provenance;
pub mod routes;
pub mod scheduler;

use anyhow::{Context, Result};
use routes::{AppState, Shared};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// A checkpoint or run directory.
    pub model: PathBuf,
    pub host: String,
    /// 0 picks a free port (the line printed at start says which).
    pub port: u16,
    pub api_key: Option<String>,
    /// The model id clients name; default: the --model directory's name.
    pub served_model_name: Option<String>,
    /// Sequences decoded together in one forward pass.
    pub max_batch: usize,
    /// Sequences allowed to wait for a place in the batch; beyond them requests get 429.
    pub max_queue: usize,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    /// How to hold the weight matrices (default: as the model file stores them).
    pub weights: Option<jarip_infer::WeightFormat>,
    /// How each sequence caches keys and values.
    pub kv_cache: jarip_infer::KvFormat,
    /// Bytes of finished sequences' KV caches kept for prompts that start alike (0: none).
    pub prefix_cache_bytes: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            model: PathBuf::new(),
            host: "127.0.0.1".into(),
            port: 8000,
            api_key: None,
            served_model_name: None,
            max_batch: 16,
            max_queue: 256,
            max_body_bytes: 1 << 20,
            request_timeout: Duration::from_secs(600),
            weights: None,
            kv_cache: jarip_infer::KvFormat::F32,
            prefix_cache_bytes: 512 << 20,
        }
    }
}

/// The name a model directory is served under: its own name (`runs/demo` → `demo`).
pub fn default_model_name(path: &Path) -> String {
    let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    abs.file_name().map_or_else(|| "jarip".to_string(), |n| n.to_string_lossy().into_owned())
}

/// Loads the model and starts the scheduler: everything but the socket.
pub fn build_state(opts: &ServeOptions) -> Result<Shared> {
    let loaded = jarip_infer::load_model_cpu(&opts.model)?;
    let name = opts.served_model_name.clone().unwrap_or_else(|| default_model_name(&opts.model));
    let info = provenance::summary(&name, &loaded);
    if !loaded.is_own() {
        eprintln!("jarip serve: {} is {}; /info and the web page say so", loaded.dir.display(), loaded.origin_label());
    }
    let format = opts.weights.unwrap_or(loaded.stored_format);
    let engine = jarip_infer::Engine::with_format(&loaded.model, loaded.tokenizer, format, opts.kv_cache)?
        .with_prefix_cache(opts.prefix_cache_bytes);
    let metrics = Arc::new(metrics::Metrics::new(&name));
    let max_batch = opts.max_batch.max(1);
    let scheduler = scheduler::Scheduler::start(engine.clone(), max_batch, metrics.clone())
        .context("cannot start the scheduler thread")?;
    Ok(Arc::new(AppState {
        engine,
        model_name: name,
        created: routes::unix_now(),
        api_key: opts.api_key.clone().filter(|k| !k.is_empty()),
        scheduler,
        capacity: scheduler::Capacity::new(max_batch + opts.max_queue),
        metrics,
        info,
        max_body_bytes: opts.max_body_bytes,
        request_timeout: opts.request_timeout,
        draining: AtomicBool::new(false),
        next_id: AtomicU64::new(0),
    }))
}

/// Serves until `shutdown` resolves, then drains: no new connections, the requests in flight
/// run to their end, and the scheduler stops once idle.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Shared,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let app = routes::router(state.clone());
    let st = state.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            st.draining.store(true, Ordering::Release);
        })
        .await
        .context("the HTTP server failed")?;
    tokio::task::spawn_blocking(move || state.scheduler.shutdown()).await.context("the scheduler did not stop")?;
    Ok(())
}

/// SIGINT and SIGTERM, listened for from the moment this is made: the URL is printed after, so a
/// signal sent as soon as the server is up drains it instead of killing it.
struct Signals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                int: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
                term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.int.recv() => {},
            _ = self.term.recv() => {},
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM; a second signal exits at once.
async fn shutdown_signal(mut signals: Signals) {
    signals.recv().await;
    eprintln!("jarip serve: shutting down; finishing the requests in flight (signal again to quit now)");
    tokio::spawn(async move {
        signals.recv().await;
        std::process::exit(130);
    });
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `jarip serve`: loads the model, binds, prints the URL once connections are accepted, and
/// serves until SIGINT/SIGTERM.
pub fn run(opts: &ServeOptions) -> Result<()> {
    let state = build_state(opts)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start tokio")?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind((opts.host.as_str(), opts.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", opts.host, opts.port))?;
        let addr = listener.local_addr()?;
        if !is_loopback(&opts.host) && state.api_key.is_none() {
            eprintln!("jarip serve: warning: listening on {} without --api-key: anyone who can reach it can use it", addr);
        }
        let signals = Signals::new()?;
        let ctx = state.engine.model().config().max_seq_len;
        // Printed after bind: the socket already queues connections, so the URL is usable now.
        println!(
            "jarip serve: model '{}' (context {ctx}, batch {}) listening on http://{addr}/ — web chat at /, OpenAI API at /v1",
            state.model_name,
            opts.max_batch.max(1),
        );
        use std::io::Write;
        let _ = std::io::stdout().flush();
        serve(listener, state, shutdown_signal(signals)).await
    })
}
