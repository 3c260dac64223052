//! `jarip serve` through the binary over real sockets: the OpenAI endpoints, streaming, every
//! bad input with its status code, the API key, a flood beyond the queue, cancellation on
//! disconnect, the timeout, a fuzz of request bodies, and graceful shutdown.
//!
//! The model is a randomly initialised tiny transformer with a small trained tokenizer, written
//! as a checkpoint directory in-process (seconds, no training needed: the server's behaviour
//! does not depend on the weights being good).

mod common;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Long enough that one sequence decoding to its end takes a while even on a fast machine (the
/// flood and timeout tests hold the batch with such sequences).
const CONTEXT: usize = 2048;

fn tiny_model(dir: &Path, name: &str) -> PathBuf {
    common::tiny_checkpoint(dir, name, CONTEXT)
}

struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(model: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_jarip"))
            .args(["serve", "--model", model.to_str().unwrap(), "--port", "0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start jarip serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url =
            line.split_whitespace().find(|w| w.starts_with("http://")).unwrap_or_else(|| panic!("no URL in {line:?}"));
        let addr = url.trim_start_matches("http://").trim_end_matches('/').to_string();
        assert!(addr.starts_with("127.0.0.1:"), "binds to loopback by default: {line}");
        Server { child, addr }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response: status, lower-cased headers, body (de-chunked).
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
    fn header(&self, k: &str) -> Option<&str> {
        self.headers.iter().find(|(h, _)| h == k).map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// `data:` payloads of a server-sent event stream.
    fn events(&self) -> Vec<String> {
        self.text().split("\n\n").filter_map(|b| b.strip_prefix("data: ").map(str::to_string)).collect()
    }
    /// An error's `(type, param, code)`, checking the shape on the way.
    fn error(&self) -> (String, Option<String>, Option<String>) {
        let v = self.json();
        let e = v.get("error").unwrap_or_else(|| panic!("not an error: {v}"));
        for k in ["message", "type", "param", "code"] {
            assert!(e.get(k).is_some(), "error without {k}: {v}");
        }
        assert!(!e["message"].as_str().unwrap().is_empty());
        let s = |k: &str| e[k].as_str().map(str::to_string);
        (s("type").unwrap(), s("param"), s("code"))
    }
}

/// A minimal HTTP/1.1 client: one request per connection.
fn send_raw(addr: &str, head: &str, body: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    // The server may answer (413) before reading a large body and close: not an error here.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Resp {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| panic!("no head in {raw:?}"));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked")) {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(nl) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..nl]).unwrap().trim(), 16).unwrap();
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[nl + 2..nl + 2 + size]);
            rest = &rest[nl + 2 + size + 2..];
        }
        body = out;
    }
    Resp { status, headers, body }
}

fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    send_raw(addr, &head, body)
}

fn get(addr: &str, path: &str) -> Resp {
    request(addr, "GET", path, &[], b"")
}

fn post(addr: &str, path: &str, body: &Value) -> Resp {
    request(addr, "POST", path, &[("Content-Type", "application/json")], body.to_string().as_bytes())
}

fn post_bytes(addr: &str, path: &str, body: &[u8]) -> Resp {
    request(addr, "POST", path, &[("Content-Type", "application/json")], body)
}

fn chat_body(text: &str) -> Value {
    json!({"messages": [{"role": "user", "content": text}], "max_tokens": 8, "seed": 1})
}

/// Reads a metric's value (summed over its label sets) from /metrics.
fn metric(addr: &str, name: &str) -> f64 {
    get(addr, "/metrics")
        .text()
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn openai_endpoints_streaming_and_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), "tiny-ko");
    let srv = Server::start(&model, &[]);
    let a = &srv.addr;

    assert_eq!(get(a, "/health").json()["status"], "ok");
    let models = get(a, "/v1/models").json();
    assert_eq!(models["data"][0]["id"], "tiny-ko", "default name: the directory's name");
    assert_eq!(models["data"][0]["max_model_len"], CONTEXT);
    assert_eq!(get(a, "/v1/models/tiny-ko").json()["id"], "tiny-ko");
    assert_eq!(get(a, "/v1/models/other").status, 404);

    // Chat, with an unknown field that must be ignored.
    let mut body = chat_body("안녕하세요");
    body["some_new_openai_field"] = json!({"x": [1, 2]});
    body["model"] = json!("tiny-ko");
    let r = post(a, "/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert!(["stop", "length"].contains(&v["choices"][0]["finish_reason"].as_str().unwrap()));
    let u = &v["usage"];
    assert!(u["prompt_tokens"].as_u64().unwrap() > 0 && u["completion_tokens"].as_u64().unwrap() <= 8);
    assert_eq!(u["total_tokens"], u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap());
    assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 0, "nothing cached yet");
    let text = v["choices"][0]["message"]["content"].as_str().unwrap().to_string();

    // The same request streamed: the same text, role first, [DONE] last, usage when asked.
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = post(a, "/v1/chat/completions", &body);
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/event-stream"));
    let events = r.events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String =
        chunks.iter().filter_map(|c| c["choices"].get(0)?["delta"]["content"].as_str()).collect::<Vec<_>>().concat();
    assert_eq!(streamed, text, "seeded: streaming (and a prompt from the prefix cache) changes nothing");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    for k in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(last["usage"][k], u[k]);
    }
    let prompt_tokens = u["prompt_tokens"].as_u64().unwrap();
    // The first request fed this whole prompt; all but its last token come from the cache.
    assert_eq!(last["usage"]["prompt_tokens_details"]["cached_tokens"], prompt_tokens - 1);

    // The next turn resends the first: at least that prompt is not prefilled again.
    let turn2 = json!({"messages": [
        {"role": "user", "content": "안녕하세요"}, {"role": "assistant", "content": text},
        {"role": "user", "content": "다시 한 번"}], "max_tokens": 4, "seed": 1});
    let u2 = post(a, "/v1/chat/completions", &turn2).json()["usage"].clone();
    let cached = u2["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap();
    assert!(cached >= prompt_tokens && cached < u2["prompt_tokens"].as_u64().unwrap(), "{u2}");
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));

    // Completions: n choices with consecutive seeds, logprobs, stop strings.
    let r = post(
        a,
        "/v1/completions",
        &json!({"prompt": "대한민국은", "max_tokens": 6, "n": 2, "seed": 5, "temperature": 1.0, "logprobs": 2}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), lp["token_logprobs"].as_array().unwrap().len());
    assert!(lp["top_logprobs"][0].as_object().unwrap().len() <= 2);
    let again =
        post(a, "/v1/completions", &json!({"prompt": "대한민국은", "max_tokens": 6, "seed": 6, "temperature": 1.0}));
    assert_eq!(again.json()["choices"][0]["text"], v["choices"][1]["text"], "choice j uses seed + j");
    // Token prompts, a batch of prompts, and chat logprobs.
    let r = post(a, "/v1/completions", &json!({"prompt": [[1, 2, 3], "All the"], "max_tokens": 3}));
    assert_eq!(r.json()["choices"].as_array().unwrap().len(), 2);
    let r = post(
        a,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "logprobs": true, "top_logprobs": 2,
                "top_k": 5, "min_p": 0.05, "top_p": 0.9, "presence_penalty": 0.5, "frequency_penalty": 0.5}),
    );
    let content = &r.json()["choices"][0]["logprobs"]["content"];
    if let Some(first) = content.get(0) {
        assert!(first["logprob"].as_f64().unwrap() <= 0.0);
        assert_eq!(first["top_logprobs"].as_array().unwrap().len(), 2);
    }

    // Concurrent requests share forward passes: the mean batch size exceeds one.
    let steps0 = metric(a, "jarip:engine_steps_total");
    let seqs0 = metric(a, "jarip:engine_step_sequences_total");
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let a = a.clone();
            std::thread::spawn(move || {
                let body = json!({"prompt": [5 + i, 6, 7], "max_tokens": 40, "stream": i % 2 == 0});
                post(&a, "/v1/completions", &body).status
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 200);
    }
    let mean_batch =
        (metric(a, "jarip:engine_step_sequences_total") - seqs0) / (metric(a, "jarip:engine_steps_total") - steps0);
    assert!(mean_batch > 1.5, "mean batch {mean_batch}: concurrent requests were not batched");

    // Prometheus text with vLLM-like names.
    let m = get(a, "/metrics");
    assert!(m.header("content-type").unwrap().starts_with("text/plain"));
    let text = m.text();
    for name in [
        "jarip:num_requests_running",
        "jarip:num_requests_waiting",
        "jarip:prompt_tokens_total",
        "jarip:prefix_cache_hit_tokens_total",
        "jarip:prefix_cache_bytes",
        "jarip:generation_tokens_total",
        "jarip:request_success_total",
        "jarip:time_to_first_token_seconds_bucket",
        "jarip:inter_token_latency_seconds_bucket",
        "jarip:e2e_request_latency_seconds_bucket",
        "jarip:request_queue_time_seconds_bucket",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}");
    }
    assert!(metric(a, "jarip:generation_tokens_total") > 0.0);
    assert!(metric(a, "jarip:prefix_cache_hit_tokens_total") >= 2.0 * prompt_tokens as f64 - 1.0);
    assert!(metric(a, "jarip:prefix_cache_bytes") > 0.0);
    assert!(metric(a, "jarip:e2e_request_latency_seconds_count") >= 12.0);

    // The page: self-contained (nothing fetched from elsewhere), Korean and English.
    let page = get(a, "/");
    assert!(page.header("content-type").unwrap().starts_with("text/html"));
    let html = page.text();
    assert!(html.contains("새 대화") && html.contains("New chat"));
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http") && !html.contains("@import"));
    assert!(page.header("content-security-policy").unwrap().contains("default-src 'none'"));
    let info = get(a, "/info").json();
    assert_eq!(info["statement"], "trained from scratch with jarip");
    assert_eq!(info["seed"], 11);
    assert!(info["tokenizer_sha256"].as_str().unwrap().len() == 64);
}

#[test]
fn bad_inputs_get_openai_errors_with_the_right_status() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), "m");
    let srv = Server::start(&model, &["--max-body-bytes", "20000", "--served-model-name", "jarip-test"]);
    let a = &srv.addr;
    let chat = "/v1/chat/completions";

    let check = |r: Resp, status: u16, param: Option<&str>, what: &str| {
        assert_eq!(r.status, status, "{what}: {}", r.text());
        let (_, p, _) = r.error();
        if let Some(want) = param {
            assert_eq!(p.as_deref(), Some(want), "{what}");
        }
    };
    check(post_bytes(a, chat, b"{\"messages\": [}"), 400, None, "malformed JSON");
    check(post_bytes(a, chat, b""), 400, None, "empty body");
    check(post_bytes(a, chat, b"[]"), 400, None, "not an object");
    check(
        post_bytes(a, chat, b"{\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}"),
        400,
        None,
        "invalid UTF-8",
    );
    let wrong_types = [
        ("temperature", json!("hot")),
        ("max_tokens", json!("8")),
        ("n", json!(1.5)),
        ("stream", json!(1)),
        ("stop", json!(7)),
        ("seed", json!([1])),
        ("logprobs", json!("yes")),
        ("top_k", json!(2.5)),
    ];
    for (k, v) in wrong_types {
        let mut body = chat_body("x");
        body[k] = v;
        check(post(a, chat, &body), 400, Some(k), "wrong type");
    }
    for (k, v) in [("temperature", json!(-1)), ("top_p", json!(0)), ("presence_penalty", json!(3)), ("n", json!(0))] {
        let mut body = chat_body("x");
        body[k] = v;
        check(post(a, chat, &body), 400, Some(k), "out of range");
    }
    check(post(a, chat, &json!({"messages": []})), 400, Some("messages"), "empty messages");
    check(post(a, chat, &json!({"model": "x"})), 400, Some("messages"), "no messages");
    check(
        post(a, chat, &json!({"messages": [{"role": "wizard", "content": "x"}]})),
        400,
        Some("messages[0].role"),
        "role",
    );
    check(
        post(a, chat, &json!({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]})),
        400,
        Some("messages"),
        "system message after the first",
    );
    let mut body = chat_body("x");
    body["model"] = json!("gpt-4o");
    let r = post(a, chat, &body);
    check(r, 404, Some("model"), "unknown model");
    let r = post(a, "/v1/completions", &json!({"model": "gpt-4o", "prompt": "x"}));
    assert_eq!(r.error().2.as_deref(), Some("model_not_found"));
    body["model"] = json!("jarip-test");
    assert_eq!(post(a, chat, &body).status, 200, "--served-model-name is the id");

    // Over the body limit: 413, whether declared up front or not.
    let huge = json!({"messages": [{"role": "user", "content": "가".repeat(30000)}]});
    check(post(a, chat, &huge), 413, None, "body over the limit");
    let chunked = format!(
        "POST {chat} HTTP/1.1\r\nHost: {a}\r\nConnection: close\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
    );
    let body = huge.to_string();
    let mut chunks = Vec::new();
    for part in body.as_bytes().chunks(4000) {
        chunks.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        chunks.extend_from_slice(part);
        chunks.extend_from_slice(b"\r\n");
    }
    chunks.extend_from_slice(b"0\r\n\r\n");
    check(send_raw(a, &chunked, &chunks), 413, None, "chunked body over the limit");

    // A prompt longer than the context: 400 naming the limit.
    // Characters the tokenizer never saw: at least one token each.
    let long = "힣".repeat(CONTEXT + 10);
    let r = post(a, chat, &json!({"messages": [{"role": "user", "content": long}]}));
    assert_eq!(r.status, 400);
    let (_, param, code) = r.error();
    assert_eq!((param.as_deref(), code.as_deref()), (Some("messages"), Some("context_length_exceeded")));
    assert!(r.json()["error"]["message"].as_str().unwrap().contains(&format!("{CONTEXT} tokens")));
    let r = post(a, "/v1/completions", &json!({"prompt": vec![5; CONTEXT]}));
    check(r, 400, Some("prompt"), "token prompt over the context");
    check(
        post(a, "/v1/completions", &json!({"prompt": [100000]})),
        400,
        Some("prompt"),
        "token outside the vocabulary",
    );
    check(post(a, "/v1/completions", &json!({"prompt": "x", "echo": true})), 400, Some("echo"), "unsupported");

    // Unknown routes and methods, in the same shape.
    check(get(a, "/v2/anything"), 404, None, "unknown route");
    check(get(a, chat), 405, None, "wrong method");

    // A fuzz of bodies: garbage, truncations and mutations of valid requests. None may get a
    // 5xx, and the server keeps serving.
    let valid = json!({"messages": [{"role": "user", "content": "안녕 hello"}], "max_tokens": 2, "n": 2,
                       "stop": ["a", "b"], "logprobs": true, "top_logprobs": 1, "stream": false})
    .to_string()
    .into_bytes();
    let mut rng = 0x9e3779b97f4a7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for i in 0..150 {
        let mut body = valid.clone();
        match i % 3 {
            0 => body.truncate(next() as usize % body.len()),
            1 => {
                for _ in 0..1 + next() % 4 {
                    let at = next() as usize % body.len();
                    body[at] = next() as u8;
                }
            }
            _ => body = (0..next() % 64).map(|_| next() as u8).collect(),
        }
        let path = if i % 2 == 0 { chat } else { "/v1/completions" };
        let r = post_bytes(a, path, &body);
        assert!(r.status < 500, "{} for {:?}: {}", r.status, String::from_utf8_lossy(&body), r.text());
    }
    assert_eq!(post(a, chat, &chat_body("still there?")).status, 200);
    assert_eq!(get(a, "/health").status, 200);
    assert!(metric(a, "jarip:request_errors_total") > 20.0);
}

#[test]
fn api_key_is_required_when_set() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), "m");
    let srv = Server::start(&model, &["--api-key", "sekrit"]);
    let a = &srv.addr;
    let body = chat_body("x").to_string();
    let r = request(a, "POST", "/v1/chat/completions", &[], body.as_bytes());
    assert_eq!(r.status, 401);
    assert_eq!(r.error().0, "authentication_error");
    let r = request(a, "POST", "/v1/chat/completions", &[("Authorization", "Bearer wrong")], body.as_bytes());
    assert_eq!(r.status, 401);
    assert_eq!(request(a, "GET", "/v1/models", &[("Authorization", "Bearer sekri")], b"").status, 401);
    let r = request(a, "POST", "/v1/chat/completions", &[("Authorization", "Bearer sekrit")], body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    // The page, its info and health stay open (the page asks for the key itself).
    assert_eq!(get(a, "/health").status, 200);
    assert_eq!(get(a, "/").status, 200);
    assert_eq!(get(a, "/info").json()["auth"], true);
}

/// Opens a streaming request and returns once its response has started (so its slots are
/// held); the connection stays open until the stream is dropped.
fn open_stream(addr: &str, body: &Value) -> BufReader<TcpStream> {
    let mut s = TcpStream::connect(addr).unwrap();
    let b = body.to_string();
    write!(s, "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len())
        .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.contains(" 200 "), "{line}");
    r
}

#[test]
fn flood_beyond_the_queue_gets_429_and_disconnects_cancel() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), "m");
    let srv = Server::start(&model, &["--max-batch", "1", "--max-queue", "1"]);
    let a = &srv.addr;
    // Two long generations fill the batch (1) and the queue (1)...
    let long = json!({"prompt": [5, 6, 7], "max_tokens": 100000, "stream": true, "ignore_eos": true});
    let s1 = open_stream(a, &long);
    let s2 = open_stream(a, &long);
    // (The gauges follow the scheduler's loop, which may lag a busy machine.)
    wait_for("one running and one waiting", || {
        metric(a, "jarip:num_requests_running") == 1.0 && metric(a, "jarip:num_requests_waiting") == 1.0
    });
    // ...so a third request is refused at once.
    let r = post(a, "/v1/completions", &json!({"prompt": "x", "max_tokens": 1}));
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.error().2.as_deref(), Some("queue_full"));
    let r = post(a, "/v1/completions", &json!({"prompt": "x", "max_tokens": 1, "stream": true}));
    assert_eq!(r.status, 429);
    // The clients go away: their sequences are cancelled and the server serves again.
    drop(s1);
    drop(s2);
    wait_for("both requests to be cancelled", || metric(a, "jarip:request_cancelled_total") == 2.0);
    wait_for("the cancelled sequences to leave", || {
        metric(a, "jarip:num_requests_running") == 0.0 && metric(a, "jarip:num_requests_waiting") == 0.0
    });
    assert_eq!(post(a, "/v1/completions", &json!({"prompt": "x", "max_tokens": 2})).status, 200);
    assert_eq!(metric(a, "jarip:request_errors_total"), 2.0);
    // A client waiting for a whole (non-streamed) answer that goes away is cancelled too.
    let mut s = TcpStream::connect(a).unwrap();
    let b = json!({"prompt": [5, 6, 7], "max_tokens": 100000, "ignore_eos": true}).to_string();
    write!(s, "POST /v1/completions HTTP/1.1\r\nHost: {a}\r\nContent-Length: {}\r\n\r\n{b}", b.len()).unwrap();
    wait_for("the request to run", || metric(a, "jarip:num_requests_running") == 1.0);
    drop(s);
    wait_for("the request to be cancelled", || metric(a, "jarip:request_cancelled_total") == 3.0);
    wait_for("its sequence to leave", || metric(a, "jarip:num_requests_running") == 0.0);
}

#[test]
fn requests_time_out() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), "m");
    let srv = Server::start(&model, &["--request-timeout", "0.3", "--max-batch", "1"]);
    let a = &srv.addr;
    // Far more tokens than 0.3 s allows: the context is long and the batch holds one.
    let body = json!({"prompt": [5], "max_tokens": CONTEXT, "n": 8, "ignore_eos": true});
    let r = post(a, "/v1/completions", &body);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.error().2.as_deref(), Some("timeout"));
    let mut body = body;
    body["stream"] = json!(true);
    let r = post(a, "/v1/completions", &body);
    let events = r.events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert!(events[events.len() - 2].contains("\"timeout\""), "{events:?}");
    wait_for("the timed-out sequences to leave", || metric(a, "jarip:num_requests_running") == 0.0);
    assert_eq!(metric(a, "jarip:request_timeout_total"), 2.0);
}

#[cfg(unix)]
#[test]
fn sigterm_drains_the_requests_in_flight() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), "m");
    let mut srv = Server::start(&model, &[]);
    let a = srv.addr.clone();
    let body = json!({"prompt": [5, 6], "max_tokens": 300, "stream": true, "stream_options": {"include_usage": true},
                      "ignore_eos": true});
    let mut stream = open_stream(&a, &body);
    let term = Command::new("kill").args(["-TERM", &srv.pid().to_string()]).status().unwrap();
    assert!(term.success());
    let mut rest = String::new();
    stream.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("data: [DONE]"), "the stream in flight was cut: {rest}");
    assert!(rest.contains("\"completion_tokens\":300"), "{rest}");
    let status = srv.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(TcpStream::connect(&a).is_err(), "no new connections after shutdown");
}
