//! The OpenAI wire format: request bodies → typed requests, and the error shape.
//!
//! Parsing is done by hand over a `serde_json::Value` rather than with derived structs so that
//! every error names the parameter at fault (`param` in the error body, as OpenAI does), a
//! `null` means "not given" (clients differ on sending nulls), unknown fields are ignored and a
//! field of the wrong type is an error. Nothing here knows about HTTP or the model, which keeps
//! the parser pure and easy to fuzz (see the proptest at the bottom).

use jarip_infer::SamplingParams;
use jarip_tokenizer::{Message, Role};
use serde_json::{json, Map, Value};

/// At most this many choices per prompt (`n`).
pub const MAX_N: usize = 16;
/// At most this many stop strings.
pub const MAX_STOP: usize = 16;
/// At most this many prompts in one `/v1/completions` request.
pub const MAX_PROMPTS: usize = 64;

/// An error as OpenAI returns it: `{"error":{"message","type","param","code"}}` with a status.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), kind, param: None, code: None }
    }

    /// 400 about one parameter.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request_error", message).param(param)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request_error", message)
    }

    pub fn param(mut self, param: &str) -> Self {
        self.param = Some(param.to_string());
        self
    }

    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

/// Fields shared by chat and text completions.
#[derive(Debug, Clone, PartialEq)]
pub struct Common {
    pub model: Option<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// `max_completion_tokens`, else `max_tokens`; `None` leaves the default to the caller.
    pub max_tokens: Option<usize>,
    pub n: usize,
    pub stop: Vec<String>,
    pub sampling: SamplingParams,
    pub logprobs: bool,
    /// vLLM's extension: generate past the end-of-text tokens (for benchmarks: every request
    /// then runs to `max_tokens`).
    pub ignore_eos: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub common: Common,
    pub messages: Vec<Message>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRequest {
    pub common: Common,
    pub prompts: Vec<Prompt>,
}

/// Bytes of a request body → its top-level JSON object.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    // Checked first so that the message says what is wrong instead of a JSON column.
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ApiError::bad_request(format!("the request body is not valid UTF-8 (at byte {})", e.valid_up_to()))
            .code("invalid_utf8")
    })?;
    if text.trim().is_empty() {
        return Err(ApiError::bad_request("the request body is empty; expected a JSON object").code("invalid_json"));
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad_request("the request body must be a JSON object").code("invalid_json")),
        Err(e) => Err(ApiError::bad_request(format!("the request body is not valid JSON: {e}")).code("invalid_json")),
    }
}

pub fn parse_chat(bytes: &[u8]) -> Result<ChatRequest, ApiError> {
    let obj = parse_object(bytes)?;
    let f = Fields(&obj);
    let common = f.common(true)?;
    let messages = f.messages()?;
    Ok(ChatRequest { common, messages })
}

pub fn parse_completion(bytes: &[u8]) -> Result<CompletionRequest, ApiError> {
    let obj = parse_object(bytes)?;
    let f = Fields(&obj);
    let common = f.common(false)?;
    let prompts = f.prompts()?;
    Ok(CompletionRequest { common, prompts })
}

/// Typed access to a request's fields; `null` counts as absent.
struct Fields<'a>(&'a Map<String, Value>);

fn type_error(param: &str, want: &str, got: &Value) -> ApiError {
    let got = match got {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    ApiError::invalid(param, format!("'{param}' must be {want}, not {got}")).code("invalid_type")
}

impl Fields<'_> {
    fn get(&self, k: &str) -> Option<&Value> {
        self.0.get(k).filter(|v| !v.is_null())
    }

    fn number(&self, k: &str) -> Result<Option<f32>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Number(n)) => {
                let x = n.as_f64().unwrap_or(f64::NAN);
                if !x.is_finite() || x.abs() > f32::MAX as f64 {
                    return Err(ApiError::invalid(k, format!("'{k}' is out of range")));
                }
                Ok(Some(x as f32))
            }
            Some(v) => Err(type_error(k, "a number", v)),
        }
    }

    fn int(&self, k: &str) -> Result<Option<i64>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Number(n)) => match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => Ok(Some(i)),
                (None, Some(_)) => Err(ApiError::invalid(k, format!("'{k}' is out of range"))),
                _ => Err(ApiError::invalid(k, format!("'{k}' must be an integer")).code("invalid_type")),
            },
            Some(v) => Err(type_error(k, "an integer", v)),
        }
    }

    /// An integer in `lo..=hi`.
    fn int_in(&self, k: &str, lo: i64, hi: i64) -> Result<Option<i64>, ApiError> {
        match self.int(k)? {
            Some(i) if i < lo || i > hi => Err(ApiError::invalid(k, format!("'{k}' must be in [{lo}, {hi}], got {i}"))),
            x => Ok(x),
        }
    }

    fn bool(&self, k: &str) -> Result<Option<bool>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(type_error(k, "a boolean", v)),
        }
    }

    fn string(&self, k: &str) -> Result<Option<&str>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(type_error(k, "a string", v)),
        }
    }

    fn common(&self, chat: bool) -> Result<Common, ApiError> {
        let model = self.string("model")?.map(str::to_string);
        let stream = self.bool("stream")?.unwrap_or(false);
        let include_usage = match self.get("stream_options") {
            None => false,
            Some(Value::Object(o)) => {
                Fields(o).bool("include_usage").map_err(|e| e.param("stream_options"))?.unwrap_or(false)
            }
            Some(v) => return Err(type_error("stream_options", "an object", v)),
        };
        // max_completion_tokens replaced max_tokens in OpenAI's chat API; both are accepted.
        let mut max_tokens = None;
        for k in ["max_tokens", "max_completion_tokens"] {
            if let Some(m) = self.int_in(k, 1, i64::MAX)? {
                max_tokens = Some(usize::try_from(m).unwrap_or(usize::MAX));
            }
        }
        let n = self.int_in("n", 1, MAX_N as i64)?.unwrap_or(1) as usize;
        let stop = self.stop()?;

        let mut s = SamplingParams::default();
        if let Some(t) = self.number("temperature")? {
            s.temperature = t;
        }
        if let Some(p) = self.number("top_p")? {
            s.top_p = p;
        }
        if let Some(p) = self.number("min_p")? {
            s.min_p = p;
        }
        // vLLM's convention: -1 (or 0) disables top-k.
        if let Some(k) = self.int_in("top_k", -1, i64::MAX)? {
            s.top_k = usize::try_from(k).unwrap_or(0);
        }
        if let Some(p) = self.number("presence_penalty")? {
            s.presence_penalty = p;
        }
        if let Some(p) = self.number("frequency_penalty")? {
            s.frequency_penalty = p;
        }
        if let Some(p) = self.number("repetition_penalty")? {
            s.repetition_penalty = p;
        }
        // Any integer is a seed; negative ones map to distinct u64s.
        s.seed = match self.get("seed") {
            None => None,
            Some(Value::Number(n)) if n.is_u64() => n.as_u64(),
            Some(Value::Number(n)) if n.is_i64() => n.as_i64().map(|i| i as u64),
            Some(v) => return Err(type_error("seed", "an integer", v)),
        };

        let logprobs = if chat {
            let lp = self.bool("logprobs")?.unwrap_or(false);
            if let Some(k) = self.int_in("top_logprobs", 0, 20)? {
                if !lp && k > 0 {
                    return Err(ApiError::invalid("top_logprobs", "'top_logprobs' requires 'logprobs' to be true"));
                }
                s.top_logprobs = k as usize;
            }
            lp
        } else {
            // Legacy completions: `logprobs` is the number of alternatives to report.
            match self.int_in("logprobs", 0, 20)? {
                Some(k) => {
                    s.top_logprobs = k as usize;
                    true
                }
                None => false,
            }
        };
        let ignore_eos = self.bool("ignore_eos")?.unwrap_or(false);
        self.unsupported(chat)?;
        Ok(Common { model, stream, include_usage, max_tokens, n, stop, sampling: s, logprobs, ignore_eos })
    }

    /// Known parameters this server cannot honour: refused rather than silently ignored.
    fn unsupported(&self, chat: bool) -> Result<(), ApiError> {
        let refuse =
            |k: &str, why: &str| Err(ApiError::invalid(k, format!("'{k}' {why}")).code("unsupported_parameter"));
        match self.get("logit_bias") {
            Some(Value::Object(o)) if o.is_empty() => {}
            None => {}
            Some(Value::Object(_)) => return refuse("logit_bias", "is not supported by this server"),
            Some(v) => return Err(type_error("logit_bias", "an object", v)),
        }
        if chat {
            if let Some(rf) = self.get("response_format") {
                let Value::Object(o) = rf else { return Err(type_error("response_format", "an object", rf)) };
                match o.get("type") {
                    Some(Value::String(t)) if t == "text" => {}
                    _ => {
                        return refuse(
                            "response_format",
                            "other than {\"type\":\"text\"} is not supported by this server",
                        )
                    }
                }
            }
        } else {
            if self.bool("echo")? == Some(true) {
                return refuse("echo", "is not supported by this server");
            }
            if self.string("suffix")?.is_some_and(|s| !s.is_empty()) {
                return refuse("suffix", "is not supported by this server");
            }
            let n = self.int("n")?.unwrap_or(1);
            if self.int("best_of")?.is_some_and(|b| b != n) {
                return refuse("best_of", "must equal 'n' on this server (no server-side ranking)");
            }
        }
        Ok(())
    }

    fn stop(&self) -> Result<Vec<String>, ApiError> {
        let stops = match self.get("stop") {
            None => vec![],
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    v => Err(type_error("stop", "a string or an array of strings", v)),
                })
                .collect::<Result<_, _>>()?,
            Some(v) => return Err(type_error("stop", "a string or an array of strings", v)),
        };
        if stops.len() > MAX_STOP {
            return Err(ApiError::invalid("stop", format!("at most {MAX_STOP} stop sequences are allowed")));
        }
        Ok(stops)
    }

    fn messages(&self) -> Result<Vec<Message>, ApiError> {
        let msgs = match self.get("messages") {
            None => return Err(ApiError::invalid("messages", "'messages' is required")),
            Some(Value::Array(a)) => a,
            Some(v) => return Err(type_error("messages", "an array", v)),
        };
        if msgs.is_empty() {
            return Err(ApiError::invalid("messages", "'messages' must contain at least one message"));
        }
        msgs.iter().enumerate().map(|(i, m)| message(i, m)).collect()
    }

    fn prompts(&self) -> Result<Vec<Prompt>, ApiError> {
        let want = "a string, an array of strings, an array of token ids or an array of such arrays";
        let p = match self.get("prompt") {
            None => return Err(ApiError::invalid("prompt", "'prompt' is required")),
            Some(Value::String(s)) => vec![Prompt::Text(s.clone())],
            Some(Value::Array(a)) if a.is_empty() => {
                return Err(ApiError::invalid("prompt", "'prompt' must not be an empty array"))
            }
            Some(Value::Array(a)) if a.iter().all(Value::is_number) => vec![Prompt::Tokens(token_ids(a)?)],
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(Prompt::Text(s.clone())),
                    Value::Array(ids) if ids.iter().all(Value::is_number) => Ok(Prompt::Tokens(token_ids(ids)?)),
                    v => Err(type_error("prompt", want, v)),
                })
                .collect::<Result<_, _>>()?,
            Some(v) => return Err(type_error("prompt", want, v)),
        };
        if p.len() > MAX_PROMPTS {
            return Err(ApiError::invalid("prompt", format!("at most {MAX_PROMPTS} prompts per request")));
        }
        Ok(p)
    }
}

fn token_ids(a: &[Value]) -> Result<Vec<u32>, ApiError> {
    a.iter()
        .map(|v| {
            v.as_u64()
                .and_then(|t| u32::try_from(t).ok())
                .ok_or_else(|| ApiError::invalid("prompt", format!("token ids must be non-negative integers, got {v}")))
        })
        .collect()
}

fn message(i: usize, m: &Value) -> Result<Message, ApiError> {
    let param = format!("messages[{i}]");
    let Value::Object(o) = m else { return Err(type_error(&param, "an object", m)) };
    let f = Fields(o);
    let role = match f.string("role").map_err(|e| e.param(&format!("{param}.role")))? {
        None => return Err(ApiError::invalid(&format!("{param}.role"), format!("{param}.role is required"))),
        // OpenAI's newer name for the system role.
        Some("system" | "developer") => Role::System,
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        Some(r) => {
            return Err(ApiError::invalid(
                &format!("{param}.role"),
                format!("{param}.role '{r}' is not supported (system, developer, user or assistant)"),
            ))
        }
    };
    let cparam = format!("{param}.content");
    let content = match o.get("content") {
        Some(Value::String(s)) => s.clone(),
        // An assistant turn that only called tools has no content.
        None | Some(Value::Null) if role == Role::Assistant => String::new(),
        None | Some(Value::Null) => return Err(ApiError::invalid(&cparam, format!("{cparam} is required"))),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, p) in parts.iter().enumerate() {
                let pp = format!("{cparam}[{j}]");
                let Value::Object(po) = p else { return Err(type_error(&pp, "an object", p)) };
                match (po.get("type"), po.get("text")) {
                    (Some(Value::String(t)), Some(Value::String(s))) if t == "text" => text.push_str(s),
                    (Some(Value::String(t)), _) if t != "text" => {
                        return Err(ApiError::invalid(&pp, format!("content parts of type '{t}' are not supported"))
                            .code("unsupported_parameter"))
                    }
                    _ => return Err(ApiError::invalid(&pp, format!("{pp} must be {{\"type\":\"text\",\"text\":…}}"))),
                }
            }
            text
        }
        Some(v) => return Err(type_error(&cparam, "a string or an array of content parts", v)),
    };
    Ok(Message::new(role, content))
}

/// The name of the parameter a [`SamplingParams::validate`] message is about (its first word).
pub fn sampling_error(msg: String) -> ApiError {
    let param = msg.split_whitespace().next().unwrap_or("").to_string();
    ApiError::invalid(&param, msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chat(body: &str) -> Result<ChatRequest, ApiError> {
        parse_chat(body.as_bytes())
    }

    #[test]
    fn a_full_chat_request_is_read() {
        let r = chat(
            r#"{"model":"m","messages":[{"role":"developer","content":"be brief"},{"role":"user","content":[{"type":"text","text":"안녕"},{"type":"text","text":"!"}]}],
            "temperature":0.5,"top_p":0.9,"top_k":-1,"min_p":0.1,"max_completion_tokens":7,"stop":"\n","seed":-1,"n":2,
            "presence_penalty":0.5,"frequency_penalty":-0.5,"logprobs":true,"top_logprobs":3,"stream":true,
            "stream_options":{"include_usage":true},"user":"ignored","some_future_field":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(r.messages[0], Message::new(Role::System, "be brief"));
        assert_eq!(r.messages[1], Message::new(Role::User, "안녕!"));
        let c = r.common;
        assert_eq!(c.model.as_deref(), Some("m"));
        assert!(c.stream && c.include_usage && c.logprobs);
        assert_eq!((c.max_tokens, c.n, c.stop), (Some(7), 2, vec!["\n".to_string()]));
        let s = c.sampling;
        assert_eq!((s.temperature, s.top_p, s.top_k, s.min_p), (0.5, 0.9, 0, 0.1));
        assert_eq!((s.presence_penalty, s.frequency_penalty, s.top_logprobs), (0.5, -0.5, 3));
        assert_eq!(s.seed, Some(u64::MAX));
    }

    #[test]
    fn nulls_are_absent_and_defaults_apply() {
        let r =
            chat(r#"{"messages":[{"role":"user","content":"hi"}],"temperature":null,"stop":null,"n":null}"#).unwrap();
        assert_eq!(r.common.sampling, SamplingParams::default());
        assert_eq!((r.common.n, r.common.stream, r.common.max_tokens), (1, false, None));
    }

    #[test]
    fn wrong_types_name_the_parameter() {
        for (body, param) in [
            (r#"{"messages":[{"role":"user","content":"hi"}],"temperature":"hot"}"#, "temperature"),
            (r#"{"messages":[{"role":"user","content":"hi"}],"n":1.5}"#, "n"),
            (r#"{"messages":[{"role":"user","content":"hi"}],"stream":"yes"}"#, "stream"),
            (r#"{"messages":[{"role":"user","content":"hi"}],"stop":[1]}"#, "stop"),
            (r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":0}"#, "max_tokens"),
            (r#"{"messages":[{"role":"user","content":"hi"}],"seed":"1"}"#, "seed"),
            (r#"{"messages":[{"role":"user","content":"hi"}],"model":3}"#, "model"),
            (r#"{"messages":[{"role":"user","content":"hi"}],"top_logprobs":2}"#, "top_logprobs"),
            (r#"{"messages":[{"role":"user","content":"hi"}],"logit_bias":{"5":1}}"#, "logit_bias"),
            (r#"{"messages":[]}"#, "messages"),
            (r#"{"messages":{}}"#, "messages"),
            (r#"{}"#, "messages"),
            (r#"{"messages":[{"role":"tool","content":"x"}]}"#, "messages[0].role"),
            (r#"{"messages":[{"role":"user"}]}"#, "messages[0].content"),
            (r#"{"messages":[{"role":"user","content":7}]}"#, "messages[0].content"),
            (r#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#, "messages[0].content[0]"),
        ] {
            let e = chat(body).unwrap_err();
            assert_eq!((e.status, e.param.as_deref()), (400, Some(param)), "{body}: {e:?}");
        }
    }

    #[test]
    fn bodies_that_are_not_json_objects_are_refused() {
        for (body, needle) in [
            (&b"{\"messages\": ["[..], "not valid JSON"),
            (b"[1,2]", "JSON object"),
            (b"", "empty"),
            (b"{\"messages\":\"\xff\xfe\"}", "UTF-8"),
        ] {
            let e = parse_chat(body).unwrap_err();
            assert_eq!(e.status, 400);
            assert!(e.message.contains(needle), "{e:?}");
        }
    }

    #[test]
    fn completion_prompts_in_every_shape() {
        let p = |s: &str| parse_completion(s.as_bytes()).map(|r| r.prompts);
        assert_eq!(p(r#"{"prompt":"a"}"#).unwrap(), vec![Prompt::Text("a".into())]);
        assert_eq!(p(r#"{"prompt":[1,2]}"#).unwrap(), vec![Prompt::Tokens(vec![1, 2])]);
        assert_eq!(p(r#"{"prompt":["a",[3]]}"#).unwrap(), vec![Prompt::Text("a".into()), Prompt::Tokens(vec![3])]);
        assert_eq!(p(r#"{"prompt":[-1]}"#).unwrap_err().param.as_deref(), Some("prompt"));
        assert_eq!(p(r#"{"prompt":[]}"#).unwrap_err().param.as_deref(), Some("prompt"));
        assert_eq!(p(r#"{"prompt":{}}"#).unwrap_err().param.as_deref(), Some("prompt"));
        let r = parse_completion(br#"{"prompt":"a","logprobs":2}"#).unwrap();
        assert!(r.common.logprobs);
        assert_eq!(r.common.sampling.top_logprobs, 2);
        assert_eq!(parse_completion(br#"{"prompt":"a","echo":true}"#).unwrap_err().param.as_deref(), Some("echo"));
    }

    #[test]
    fn error_shape_is_openais() {
        let e = ApiError::invalid("n", "bad").code("x");
        assert_eq!(
            e.body(),
            json!({"error": {"message": "bad", "type": "invalid_request_error", "param": "n", "code": "x"}})
        );
        assert_eq!(sampling_error("top_p must be in (0, 1]".into()).param.as_deref(), Some("top_p"));
    }

    /// JSON-ish text built from pieces of real requests, to reach deep into the parser.
    fn jsonish() -> impl Strategy<Value = String> {
        let atoms = prop_oneof![
            Just("{".to_string()),
            Just("}".to_string()),
            Just("[".to_string()),
            Just("]".to_string()),
            Just(",".to_string()),
            Just(":".to_string()),
            Just("null".to_string()),
            Just("true".to_string()),
            Just("-1".to_string()),
            Just("1e999".to_string()),
            Just("0.5".to_string()),
            Just("18446744073709551616".to_string()),
            Just("\"\\ud800\"".to_string()),
            prop::sample::select(vec![
                "\"messages\"",
                "\"role\"",
                "\"content\"",
                "\"user\"",
                "\"system\"",
                "\"assistant\"",
                "\"prompt\"",
                "\"n\"",
                "\"stop\"",
                "\"seed\"",
                "\"logprobs\"",
                "\"top_logprobs\"",
                "\"temperature\"",
                "\"text\"",
                "\"type\"",
                "\"stream_options\"",
                "\"include_usage\"",
                "\"max_tokens\"",
                "\"top_k\"",
                "\"best_of\"",
            ])
            .prop_map(str::to_string),
            ".{0,6}",
        ];
        prop::collection::vec(atoms, 0..40).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_chat(&bytes);
            let _ = parse_completion(&bytes);
        }

        #[test]
        fn jsonish_text_never_panics(s in jsonish()) {
            for body in [s.clone(), format!("{{\"messages\":[{s}]}}"), format!("{{\"prompt\":{s},\"n\":2}}")] {
                if let Err(e) = parse_chat(body.as_bytes()) {
                    prop_assert!(e.status == 400);
                }
                if let Err(e) = parse_completion(body.as_bytes()) {
                    prop_assert!(e.status == 400);
                }
            }
        }

        #[test]
        fn any_valid_value_of_a_field_parses_or_is_a_400(t in any::<f64>(), k in any::<i64>(), n in any::<i64>()) {
            let body = json!({"messages":[{"role":"user","content":"x"}],"temperature":t,"top_k":k,"n":n,"seed":k});
            match parse_chat(body.to_string().as_bytes()) {
                Ok(r) => prop_assert!(r.common.n >= 1 && r.common.n <= MAX_N),
                Err(e) => prop_assert_eq!(e.status, 400),
            }
        }
    }
}
