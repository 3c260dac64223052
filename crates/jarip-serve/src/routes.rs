//! HTTP routes: the OpenAI endpoints, health, metrics, model info and the web page.
//!
//! A generation request goes: body (size-limited) → [`api`] parser → model name check → prompt
//! tokens (context check) → one engine [`Request`] per choice → slots reserved in the bounded
//! queue → job handed to the [`Scheduler`] → its updates collected into one JSON answer, or
//! relayed as server-sent events. Dropping the response (client gone, timeout) drops the
//! update receiver, which is how the scheduler learns to cancel the sequences.

use crate::api::{self, ApiError, Common, Prompt};
use crate::metrics::Metrics;
use crate::scheduler::{Capacity, Job, Scheduler, Seq, Update};
use axum::body::Body;
use axum::extract::{Path, Request as HttpRequest, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;
use jarip_infer::{Engine, FinishReason, Request, TokenLogprob};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::time::timeout_at;

const PAGE: &str = include_str!("../web/index.html");

/// Everything the handlers share.
pub struct AppState {
    pub engine: Engine,
    pub model_name: String,
    pub created: u64,
    pub api_key: Option<String>,
    pub scheduler: Scheduler,
    pub capacity: Arc<Capacity>,
    pub metrics: Arc<Metrics>,
    /// The provenance summary (see [`crate::provenance`]).
    pub info: Value,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    /// Set once shutdown has begun: new generations are refused with 503.
    pub draining: AtomicBool,
    pub next_id: AtomicU64,
}

pub type Shared = Arc<AppState>;

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub fn router(state: Shared) -> Router {
    let v1 = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/v1/models/{*id}", get(model))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/info", get(info))
        .merge(v1)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, [(header::CONTENT_TYPE, "application/json")], self.body().to_string()).into_response()
    }
}

fn json_response(v: Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

async fn not_found(req: HttpRequest) -> ApiError {
    ApiError::new(404, "invalid_request_error", format!("no such route: {} {}", req.method(), req.uri().path()))
        .code("not_found")
}

async fn method_not_allowed(req: HttpRequest) -> ApiError {
    ApiError::new(405, "invalid_request_error", format!("{} is not allowed on {}", req.method(), req.uri().path()))
        .code("method_not_allowed")
}

/// Compares without an early exit, so the time taken says nothing about the key.
fn same_key(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `Authorization: Bearer KEY` on every `/v1` route when the server has a key.
async fn auth(State(s): State<Shared>, req: HttpRequest, next: Next) -> Response {
    if let Some(key) = &s.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim);
        let e = match given {
            None => ApiError::new(401, "authentication_error", "missing API key: send 'Authorization: Bearer KEY'"),
            Some(g) if !same_key(g.as_bytes(), key.as_bytes()) => {
                ApiError::new(401, "authentication_error", "incorrect API key")
            }
            Some(_) => return next.run(req).await,
        };
        s.metrics.request_failed(401);
        let mut r = e.code("invalid_api_key").into_response();
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    next.run(req).await
}

async fn page() -> Response {
    let mut r = Html(PAGE).into_response();
    // Everything the page needs is inline; forbid the rest, so it provably works offline.
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; \
             img-src data:; base-uri 'none'; form-action 'none'",
        ),
    );
    r
}

async fn health(State(s): State<Shared>) -> Response {
    if s.draining.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, json_response(json!({"status": "draining"}))).into_response();
    }
    json_response(json!({"status": "ok"}))
}

async fn metrics(State(s): State<Shared>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s.metrics.render()).into_response()
}

async fn info(State(s): State<Shared>) -> Response {
    let mut v = s.info.clone();
    v["max_batch_queue"] = json!(s.capacity.limit());
    v["auth"] = json!(s.api_key.is_some());
    json_response(v)
}

fn model_object(s: &AppState) -> Value {
    json!({
        "id": s.model_name, "object": "model", "created": s.created, "owned_by": "jarip",
        "max_model_len": s.engine.model().config().max_seq_len,
    })
}

async fn models(State(s): State<Shared>) -> Response {
    json_response(json!({"object": "list", "data": [model_object(&s)]}))
}

async fn model(State(s): State<Shared>, Path(id): Path<String>) -> Response {
    match s.check_model(Some(&id)) {
        Ok(()) => json_response(model_object(&s)),
        Err(e) => e.into_response(),
    }
}

/// Reads at most `max_body_bytes` of body (more is 413) within the request timeout (a client
/// that trickles its body does not hold a connection forever: 408).
async fn read_body(headers: &HeaderMap, body: Body, s: &AppState) -> Result<Vec<u8>, ApiError> {
    match tokio::time::timeout(s.request_timeout, read_limited(headers, body, s.max_body_bytes)).await {
        Ok(r) => r,
        Err(_) => Err(ApiError::new(408, "invalid_request_error", "the request body was not received in time")
            .code("request_timeout")),
    }
}

async fn read_limited(headers: &HeaderMap, body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let too_large = || {
        ApiError::new(413, "invalid_request_error", format!("the request body is larger than {limit} bytes"))
            .code("request_too_large")
    };
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Text,
}

/// What a parsed request turns into before it is queued.
struct Plan {
    kind: Kind,
    common: Common,
    /// One engine request per choice, in choice order (prompt-major, then `n`).
    requests: Vec<Request>,
    /// Prompt tokens, each prompt counted once (as OpenAI's usage does for `n` > 1).
    prompt_tokens: usize,
    /// Choices: prompts × `n`.
    choices: usize,
}

impl AppState {
    fn check_model(&self, model: Option<&str>) -> Result<(), ApiError> {
        match model {
            Some(m) if m != self.model_name => Err(ApiError::new(
                404,
                "invalid_request_error",
                format!("the model '{m}' does not exist; this server serves '{}'", self.model_name),
            )
            .param("model")
            .code("model_not_found")),
            _ => Ok(()),
        }
    }

    fn plan(&self, kind: Kind, common: Common, prompts: Vec<Vec<u32>>, param: &str) -> Result<Plan, ApiError> {
        let ctx = self.engine.model().config().max_seq_len;
        let vocab = self.engine.model().config().vocab_size;
        common.sampling.validate().map_err(api::sampling_error)?;
        let choices = prompts.len() * common.n;
        if choices > self.capacity.limit() {
            return Err(ApiError::invalid(
                "n",
                format!("{choices} choices exceed what this server holds at once ({})", self.capacity.limit()),
            ));
        }
        let stop_tokens = match kind {
            _ if common.ignore_eos => vec![],
            Kind::Chat => self.engine.chat_stop_tokens(),
            Kind::Text => vec![self.engine.tokenizer().eos_id()],
        };
        let mut requests = Vec::with_capacity(choices);
        let mut prompt_tokens = 0;
        for p in prompts {
            if p.is_empty() {
                return Err(ApiError::invalid(param, format!("'{param}' must not be empty")));
            }
            if let Some(t) = p.iter().find(|&&t| t as usize >= vocab) {
                return Err(ApiError::invalid(param, format!("token id {t} is outside the vocabulary of {vocab}")));
            }
            if p.len() >= ctx {
                return Err(ApiError::invalid(
                    param,
                    format!(
                        "this model's maximum context length is {ctx} tokens, but the {param} came to {} tokens \
                         (at least one token must be left for the reply)",
                        p.len()
                    ),
                )
                .code("context_length_exceeded"));
            }
            prompt_tokens += p.len();
            // Chat answers may run to the end of the context, as vLLM's do; legacy
            // completions default to OpenAI's 16 tokens.
            let max_tokens = common.max_tokens.unwrap_or(match kind {
                Kind::Chat => ctx - p.len(),
                Kind::Text => 16,
            });
            for j in 0..common.n {
                let mut sampling = common.sampling.clone();
                sampling.seed = sampling.seed.map(|s| s.wrapping_add(j as u64));
                let mut r = Request::new(p.clone(), max_tokens.min(ctx), sampling);
                r.stop = common.stop.clone();
                r.stop_tokens = stop_tokens.clone();
                r.logprobs = common.logprobs;
                requests.push(r);
            }
        }
        Ok(Plan { kind, common, requests, prompt_tokens, choices })
    }

    /// Reserves queue places and hands the plan to the scheduler.
    fn submit(&self, plan: &mut Plan, arrived: Instant) -> Result<UnboundedReceiver<Update>, ApiError> {
        if self.draining.load(Ordering::Acquire) {
            return Err(ApiError::new(503, "server_error", "the server is shutting down").code("shutting_down"));
        }
        let Some(slots) = self.capacity.try_reserve(plan.requests.len()) else {
            return Err(ApiError::new(
                429,
                "rate_limit_error",
                format!(
                    "the server is at capacity ({} sequences running or waiting); retry later",
                    self.capacity.limit()
                ),
            )
            .code("queue_full"));
        };
        let (tx, rx) = unbounded_channel();
        let seqs = std::mem::take(&mut plan.requests)
            .into_iter()
            .zip(slots)
            .enumerate()
            .map(|(index, (request, slot))| Seq { index, request, slot })
            .collect();
        self.scheduler.submit(Job { seqs, updates: tx, arrived }).map_err(|_| {
            ApiError::new(503, "server_error", "the scheduler is not running").code("service_unavailable")
        })?;
        Ok(rx)
    }

    fn response_id(&self, kind: Kind) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let prefix = if kind == Kind::Chat { "chatcmpl" } else { "cmpl" };
        format!("{prefix}-{:016x}{n:08x}", rand::random::<u64>())
    }
}

/// Records a request's outcome once: success, error, or (on drop without either) cancelled.
struct Tracker {
    metrics: Arc<Metrics>,
    arrived: Instant,
    done: bool,
}

impl Tracker {
    fn succeeded(&mut self, reason: &'static str) {
        self.done = true;
        self.metrics.request_succeeded(reason);
        self.metrics.e2e.observe(self.arrived.elapsed());
    }

    fn failed(&mut self, e: &ApiError) {
        self.done = true;
        self.metrics.request_failed(e.status);
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if !self.done {
            self.metrics.requests_cancelled.add(1);
        }
    }
}

fn timeout_error(metrics: &Metrics, limit: Duration) -> ApiError {
    metrics.requests_timed_out.add(1);
    ApiError::new(503, "server_error", format!("the request did not finish within {} s", limit.as_secs_f64()))
        .code("timeout")
}

async fn chat_completions(State(s): State<Shared>, headers: HeaderMap, body: Body) -> Response {
    let arrived = Instant::now();
    let planned = async {
        let bytes = read_body(&headers, body, &s).await?;
        let req = api::parse_chat(&bytes)?;
        s.check_model(req.common.model.as_deref())?;
        let ids = s
            .engine
            .tokenizer()
            .render_chat(&req.messages, true)
            .map_err(|e| ApiError::invalid("messages", format!("{e:#}")))?
            .ids;
        s.plan(Kind::Chat, req.common, vec![ids], "messages")
    }
    .await;
    run(s, planned, arrived).await
}

async fn completions(State(s): State<Shared>, headers: HeaderMap, body: Body) -> Response {
    let arrived = Instant::now();
    let planned = async {
        let bytes = read_body(&headers, body, &s).await?;
        let req = api::parse_completion(&bytes)?;
        s.check_model(req.common.model.as_deref())?;
        let tok = s.engine.tokenizer();
        // A text prompt starts a document, as in training: <|bos|> then the text. Token prompts
        // are taken as given.
        let prompts = req
            .prompts
            .into_iter()
            .map(|p| match p {
                Prompt::Text(t) => std::iter::once(tok.bos_id()).chain(tok.encode(&t)).collect(),
                Prompt::Tokens(ids) => ids,
            })
            .collect();
        s.plan(Kind::Text, req.common, prompts, "prompt")
    }
    .await;
    run(s, planned, arrived).await
}

async fn run(s: Shared, planned: Result<Plan, ApiError>, arrived: Instant) -> Response {
    // From here on the request is either answered (success or error) or abandoned.
    let mut tracker = Tracker { metrics: s.metrics.clone(), arrived, done: false };
    let result = async {
        let mut plan = planned?;
        let rx = s.submit(&mut plan, arrived)?;
        Ok::<_, ApiError>((plan, rx))
    }
    .await;
    let (plan, rx) = match result {
        Ok(x) => x,
        Err(e) => {
            tracker.failed(&e);
            return e.into_response();
        }
    };
    let out = Output {
        s: s.clone(),
        id: s.response_id(plan.kind),
        created: unix_now(),
        kind: plan.kind,
        logprobs: plan.common.logprobs,
        prompt_tokens: plan.prompt_tokens,
    };
    let deadline = tokio::time::Instant::from_std(arrived + s.request_timeout);
    if plan.common.stream {
        stream(out, plan, rx, deadline, tracker)
    } else {
        match collect(&out, &plan, rx, deadline).await {
            Ok((v, reason)) => {
                tracker.succeeded(reason);
                json_response(v)
            }
            Err(e) => {
                tracker.failed(&e);
                e.into_response()
            }
        }
    }
}

/// What every response object of one request shares.
struct Output {
    s: Shared,
    id: String,
    created: u64,
    kind: Kind,
    logprobs: bool,
    prompt_tokens: usize,
}

impl Output {
    fn object(&self, streamed: bool) -> &'static str {
        match (self.kind, streamed) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Text, _) => "text_completion",
        }
    }

    fn envelope(&self, streamed: bool, choices: Value) -> Value {
        json!({
            "id": self.id, "object": self.object(streamed), "created": self.created, "model": self.s.model_name,
            "system_fingerprint": concat!("jarip-", env!("CARGO_PKG_VERSION")), "choices": choices,
        })
    }

    /// `cached_tokens`: prompt tokens the prefix cache supplied (OpenAI's field of that name).
    fn usage(&self, completion_tokens: usize, cached_tokens: usize) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens},
        })
    }

    fn token_text(&self, t: u32) -> (String, Vec<u8>) {
        let bytes = self.s.engine.tokenizer().id_bytes(t).unwrap_or_default().to_vec();
        (String::from_utf8_lossy(&bytes).into_owned(), bytes)
    }

    /// Chat's `logprobs.content` entries.
    fn chat_logprobs(&self, lps: &[TokenLogprob]) -> Value {
        let entry = |t: u32, lp: f32| {
            let (text, bytes) = self.token_text(t);
            json!({"token": text, "logprob": lp, "bytes": bytes})
        };
        let content: Vec<Value> = lps
            .iter()
            .map(|lp| {
                let mut e = entry(lp.token, lp.logprob);
                e["top_logprobs"] = lp.top.iter().map(|&(t, l)| entry(t, l)).collect();
                e
            })
            .collect();
        json!({"content": content})
    }

    /// Legacy completions' `logprobs` object; `offset` is where this text starts in the choice.
    fn text_logprobs(&self, lps: &[TokenLogprob], mut offset: usize) -> Value {
        let (mut tokens, mut token_lps, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
        for lp in lps {
            let text = self.token_text(lp.token).0;
            offsets.push(offset);
            offset += text.chars().count();
            tokens.push(text);
            token_lps.push(lp.logprob);
            let top: serde_json::Map<String, Value> =
                lp.top.iter().map(|&(t, l)| (self.token_text(t).0, json!(l))).collect();
            tops.push(Value::Object(top));
        }
        json!({"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets})
    }

    fn choice(&self, index: usize, text: &str, lps: Option<Value>, finish: Option<FinishReason>) -> Value {
        let finish = finish.map(FinishReason::as_str);
        match self.kind {
            Kind::Chat => json!({
                "index": index, "message": {"role": "assistant", "content": text},
                "logprobs": lps, "finish_reason": finish,
            }),
            Kind::Text => json!({"index": index, "text": text, "logprobs": lps, "finish_reason": finish}),
        }
    }
}

#[derive(Default, Clone)]
struct Choice {
    text: String,
    logprobs: Vec<TokenLogprob>,
    completion_tokens: usize,
    finish: Option<FinishReason>,
}

/// Waits for every choice to finish and writes the whole answer.
async fn collect(
    out: &Output,
    plan: &Plan,
    mut rx: UnboundedReceiver<Update>,
    deadline: tokio::time::Instant,
) -> Result<(Value, &'static str), ApiError> {
    let n = plan.choices;
    let mut choices = vec![Choice::default(); n];
    let mut left = n;
    let mut cached_tokens = 0;
    while left > 0 {
        let update = match timeout_at(deadline, rx.recv()).await {
            Err(_) => return Err(timeout_error(&out.s.metrics, out.s.request_timeout)),
            Ok(None) => return Err(ApiError::new(503, "server_error", "the scheduler stopped")),
            Ok(Some(u)) => u,
        };
        match update {
            // Each prompt counted once, as its tokens are (choices are prompt-major).
            Update::Admitted { index, cached_tokens: c } if index % plan.common.n.max(1) == 0 => cached_tokens += c,
            Update::Admitted { .. } => {}
            Update::Token { index, delta, finished } => {
                let c = &mut choices[index];
                c.completion_tokens += 1;
                c.text.push_str(&delta.text);
                if let (Some(_), Some(lp)) = (delta.token, delta.logprob) {
                    c.logprobs.push(lp);
                }
                if finished.is_some() {
                    c.finish = finished;
                    left -= 1;
                }
            }
            Update::Failed { status, message } => {
                return Err(ApiError::new(
                    status,
                    if status < 500 { "invalid_request_error" } else { "server_error" },
                    message,
                ))
            }
        }
    }
    let completion_tokens = choices.iter().map(|c| c.completion_tokens).sum();
    let reason = choices[0].finish.map_or("length", FinishReason::as_str);
    let list: Vec<Value> = choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let lps = out.logprobs.then(|| match out.kind {
                Kind::Chat => out.chat_logprobs(&c.logprobs),
                Kind::Text => out.text_logprobs(&c.logprobs, 0),
            });
            out.choice(i, &c.text, lps, c.finish)
        })
        .collect();
    let mut v = out.envelope(false, Value::Array(list));
    v["usage"] = out.usage(completion_tokens, cached_tokens);
    Ok((v, reason))
}

/// Relays updates as server-sent events: chunks, then the usage chunk if asked, then `[DONE]`.
fn stream(
    out: Output,
    plan: Plan,
    rx: UnboundedReceiver<Update>,
    deadline: tokio::time::Instant,
    tracker: Tracker,
) -> Response {
    let n = plan.choices;
    let mut st = StreamState {
        rx,
        deadline,
        include_usage: plan.common.include_usage,
        pending: VecDeque::new(),
        left: n,
        completion_tokens: 0,
        cached_tokens: 0,
        per_prompt: plan.common.n.max(1),
        offsets: vec![0; n],
        first_reason: None,
        ended: false,
        tracker,
        out,
    };
    if st.out.kind == Kind::Chat {
        // The role comes first, before any token, as OpenAI sends it.
        for i in 0..n {
            let c = json!([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]);
            st.push_chunk(c);
        }
    }
    let events = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(data) = st.pending.pop_front() {
                return Some((Ok::<_, Infallible>(Event::default().data(data)), st));
            }
            if st.ended {
                return None;
            }
            st.next().await;
        }
    });
    let mut r = Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(10))).into_response();
    // Ask proxies not to buffer the stream.
    r.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

struct StreamState {
    rx: UnboundedReceiver<Update>,
    deadline: tokio::time::Instant,
    include_usage: bool,
    pending: VecDeque<String>,
    left: usize,
    completion_tokens: usize,
    cached_tokens: usize,
    /// Choices per prompt (`n`).
    per_prompt: usize,
    /// Characters sent so far per choice (legacy logprobs' text_offset).
    offsets: Vec<usize>,
    first_reason: Option<&'static str>,
    ended: bool,
    tracker: Tracker,
    out: Output,
}

impl StreamState {
    fn push_chunk(&mut self, choices: Value) {
        let mut v = self.out.envelope(true, choices);
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        self.pending.push_back(v.to_string());
    }

    fn end_with_error(&mut self, e: ApiError) {
        self.tracker.failed(&e);
        self.pending.push_back(e.body().to_string());
        self.pending.push_back("[DONE]".into());
        self.ended = true;
    }

    async fn next(&mut self) {
        let update = match timeout_at(self.deadline, self.rx.recv()).await {
            Err(_) => return self.end_with_error(timeout_error(&self.out.s.metrics, self.out.s.request_timeout)),
            Ok(None) => return self.end_with_error(ApiError::new(503, "server_error", "the scheduler stopped")),
            Ok(Some(u)) => u,
        };
        match update {
            Update::Admitted { index, cached_tokens } => {
                if index % self.per_prompt == 0 {
                    self.cached_tokens += cached_tokens;
                }
            }
            Update::Failed { status, message } => {
                let kind = if status < 500 { "invalid_request_error" } else { "server_error" };
                self.end_with_error(ApiError::new(status, kind, message))
            }
            Update::Token { index, delta, finished } => {
                self.completion_tokens += 1;
                let lps: Vec<TokenLogprob> = if self.out.logprobs && delta.token.is_some() {
                    delta.logprob.into_iter().collect()
                } else {
                    vec![]
                };
                if !delta.text.is_empty() || !lps.is_empty() {
                    let lp_value = self.out.logprobs.then(|| match self.out.kind {
                        Kind::Chat => self.out.chat_logprobs(&lps),
                        Kind::Text => self.out.text_logprobs(&lps, self.offsets[index]),
                    });
                    self.offsets[index] += delta.text.chars().count();
                    let c = match self.out.kind {
                        Kind::Chat => {
                            json!([{"index": index, "delta": {"content": delta.text}, "logprobs": lp_value, "finish_reason": null}])
                        }
                        Kind::Text => {
                            json!([{"index": index, "text": delta.text, "logprobs": lp_value, "finish_reason": null}])
                        }
                    };
                    self.push_chunk(c);
                }
                if let Some(f) = finished {
                    let reason = f.as_str();
                    self.first_reason.get_or_insert(reason);
                    let c = match self.out.kind {
                        Kind::Chat => json!([{"index": index, "delta": {}, "logprobs": null, "finish_reason": reason}]),
                        Kind::Text => json!([{"index": index, "text": "", "logprobs": null, "finish_reason": reason}]),
                    };
                    self.push_chunk(c);
                    self.left -= 1;
                    if self.left == 0 {
                        if self.include_usage {
                            let mut v = self.out.envelope(true, json!([]));
                            v["usage"] = self.out.usage(self.completion_tokens, self.cached_tokens);
                            self.pending.push_back(v.to_string());
                        }
                        self.pending.push_back("[DONE]".into());
                        self.ended = true;
                        self.tracker.succeeded(self.first_reason.unwrap_or("length"));
                    }
                }
            }
        }
    }
}
