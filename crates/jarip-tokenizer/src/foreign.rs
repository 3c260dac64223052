//! Another model's tokenizer (Llama 3, Qwen, Mistral Tekken …), read-only: its `tokenizer.json`
//! (byte-level BPE; SentencePiece-style ones are refused by name), the special tokens its
//! `tokenizer_config.json` / `generation_config.json` name, and its chat template, rendered with
//! the same Jinja settings as `transformers` (`trim_blocks`, `lstrip_blocks`, `raise_exception`,
//! `strftime_now`, Python string methods).

use crate::{hf_json, Message, Rendered, Role, Tokenizer, TOKENIZER_FILE};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;

/// What a foreign tokenizer's configs say about its special tokens and chat.
#[derive(Debug, Clone)]
pub(crate) struct Foreign {
    pub bos: Option<u32>,
    /// End-of-text ids, the main one first (generation_config may list several: Llama 3 instruct's
    /// `<|end_of_text|>`, `<|eom_id|>`, `<|eot_id|>`).
    pub eos: Vec<u32>,
    pub pad: Option<u32>,
    pub chat_template: Option<String>,
    bos_token: String,
    eos_token: String,
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).map(Some).with_context(|| format!("{} is not JSON", path.display()))
}

/// A token named in tokenizer_config: a string, or an AddedToken object with `content`.
fn token_name(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

fn ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|i| vec![i as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).map(|i| i as u32).collect(),
        _ => vec![],
    }
}

impl Tokenizer {
    /// Loads the tokenizer of a model jarip did not train, from its directory: `tokenizer.json`
    /// is required (a directory with only `tokenizer.model` is SentencePiece, refused);
    /// `tokenizer_config.json` (special tokens, chat template), `chat_template.jinja` and
    /// `generation_config.json` (EOS ids) are read where present.
    pub fn load_foreign(dir: &Path) -> Result<Self> {
        let file = dir.join(TOKENIZER_FILE);
        if !file.exists() {
            if dir.join("tokenizer.model").exists() {
                bail!(
                    "{} has only a SentencePiece tokenizer.model: jarip reads tokenizer.json (byte-level BPE); \
                     convert it with transformers (AutoTokenizer.from_pretrained(..).save_pretrained(..)) if it is one",
                    dir.display()
                );
            }
            bail!("{} has no {TOKENIZER_FILE}: a model's tokenizer is required beside its weights", dir.display());
        }
        let json = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
        let config = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
        let generation = read_json(&dir.join("generation_config.json"))?.unwrap_or(Value::Null);
        let template_file = std::fs::read_to_string(dir.join("chat_template.jinja")).ok();
        Self::from_foreign_json(json, &config, &generation, template_file)
            .with_context(|| format!("in {}", dir.display()))
    }

    /// Another model's tokenizer from the texts of its `tokenizer.json`, `tokenizer_config.json`
    /// and `generation_config.json` (`Null` where absent) and a separate chat template file.
    pub fn from_foreign_json(
        json: String,
        config: &Value,
        generation: &Value,
        template_file: Option<String>,
    ) -> Result<Self> {
        let parts = hf_json::read(&json).context("tokenizer.json is not a usable tokenizer")?;
        let by_name = |name: &str| parts.specials.iter().find(|(s, _)| s == name).map(|s| s.1);
        let named = |key: &str| -> Result<Option<(String, u32)>> {
            match token_name(config.get(key)) {
                None => Ok(None),
                Some(n) => match by_name(&n) {
                    Some(id) => Ok(Some((n, id))),
                    None => bail!("tokenizer_config.json: {key} {n:?} is not one of the tokenizer's added tokens"),
                },
            }
        };
        let bos = named("bos_token")?;
        let mut eos: Vec<u32> = named("eos_token")?.map(|(_, id)| id).into_iter().collect();
        for id in ids(generation.get("eos_token_id")) {
            if !eos.contains(&id) {
                eos.push(id);
            }
        }
        if eos.is_empty() {
            // A base model's config may name none: the usual end-of-text spellings.
            eos.extend(
                ["<|endoftext|>", "<|end_of_text|>", "</s>", "<|eos|>"].iter().filter_map(|n| by_name(n)).take(1),
            );
        }
        let Some(&first_eos) = eos.first() else {
            bail!("no EOS token (tokenizer_config.json eos_token or generation_config.json eos_token_id)")
        };
        let eos_token = parts.specials.iter().find(|s| s.1 == first_eos).map(|s| s.0.clone()).unwrap_or_default();
        let chat_template = match config.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .or(list.first())
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
                .map(str::to_string),
            _ => template_file,
        };
        let foreign = Foreign {
            bos: bos.as_ref().map(|b| b.1),
            eos,
            pad: named("pad_token")?.map(|p| p.1),
            chat_template,
            bos_token: bos.map(|b| b.0).unwrap_or_default(),
            eos_token,
        };
        Self::from_parts_any(parts, json, None, Some(foreign))
    }

    /// A tokenizer jarip trained (`dir/tokenizer.json` or the file), or else another model's
    /// ([`Tokenizer::load_foreign`] on its directory).
    pub fn load_any(path: &Path) -> Result<Self> {
        match Self::load(path) {
            Ok(t) => Ok(t),
            Err(own) => {
                let dir = if path.is_dir() { path } else { path.parent().unwrap_or(Path::new(".")) };
                Self::load_foreign(dir)
                    .map_err(|foreign| own.context(format!("nor is it another model's tokenizer: {foreign:#}")))
            }
        }
    }

    /// Whether this tokenizer has a chat template (jarip's always does).
    pub fn has_chat_template(&self) -> bool {
        self.foreign.as_ref().is_none_or(|f| f.chat_template.is_some())
    }

    /// A foreign tokenizer's chat template applied to `messages`, as text.
    pub(crate) fn render_template(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let f = self.foreign.as_ref().expect("called for foreign tokenizers");
        let Some(template) = &f.chat_template else {
            bail!(
                "this model's tokenizer has no chat template (tokenizer_config.json chat_template): use plain prompts"
            );
        };
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |fmt: String| chrono::Local::now().format(&fmt).to_string());
        env.add_template("chat", template).context("the chat template does not parse")?;
        let msgs: Vec<Value> =
            messages.iter().map(|m| serde_json::json!({"role": m.role_name(), "content": m.content})).collect();
        let ctx = minijinja::context! {
            messages => msgs,
            add_generation_prompt => add_generation_prompt,
            bos_token => f.bos_token.clone(),
            eos_token => f.eos_token.clone(),
        };
        env.get_template("chat")?.render(ctx).context("the chat template failed on these messages")
    }

    /// [`Tokenizer::render_chat`] for a foreign tokenizer: the template's text, special-token
    /// strings matched as HF does, nothing added (as `apply_chat_template`: the template writes
    /// any BOS itself); the training mask covers each assistant message's span (found
    /// by rendering the conversation up to it), which needs a template that renders earlier
    /// turns the same whatever follows — refused otherwise.
    pub(crate) fn render_chat_foreign(&self, messages: &[Message], add_generation_prompt: bool) -> Result<Rendered> {
        let text = self.render_template(messages, add_generation_prompt)?;
        // Byte spans of assistant content in `text`.
        let mut spans = Vec::new();
        for (k, m) in messages.iter().enumerate() {
            if m.role != Role::Assistant {
                continue;
            }
            let before = self.render_template(&messages[..k], true)?;
            let through = self.render_template(&messages[..=k], false)?;
            if !through.starts_with(&before) || !text.starts_with(&through) {
                bail!(
                    "the chat template renders earlier turns differently once later ones follow (message {}): \
                     the assistant spans to train on cannot be found",
                    k + 1
                );
            }
            spans.push((before.len(), through.len()));
        }
        let mut r = Rendered::default();
        let mut at = 0;
        let push = |r: &mut Rendered, piece: &str, target: bool| {
            let ids = self.encode_with_specials(piece);
            r.mask.extend(std::iter::repeat_n(target, ids.len()));
            r.ids.extend(ids);
        };
        for (a, b) in spans {
            push(&mut r, &text[at..a], false);
            push(&mut r, &text[a..b], true);
            at = b;
        }
        push(&mut r, &text[at..], false);
        Ok(r)
    }
}

impl Message {
    fn role_name(&self) -> &'static str {
        match self.role {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A jarip-trained tokenizer dressed as another family's: specials renamed, `ignore_merges`,
    /// NFC, its own template and EOS ids.
    fn foreign() -> Tokenizer {
        let docs = ["대한민국은 민주공화국이다. The cat sat on the mat. 1234".repeat(30)];
        let tok =
            crate::train(docs.into_iter(), &crate::TrainConfig { vocab_size: 300, ..Default::default() }).unwrap();
        let mut t: Value = serde_json::from_str(tok.to_json()).unwrap();
        t["model"]["ignore_merges"] = json!(true);
        t["normalizer"] = json!({"type": "NFC"});
        let names = ["<s>", "</s>", "<pad>", "<|sys|>", "<|usr|>", "<|bot|>", "<|eot|>"];
        let old: Vec<String> =
            t["added_tokens"].as_array().unwrap().iter().map(|a| a["content"].as_str().unwrap().to_string()).collect();
        for (i, (was, name)) in old.iter().zip(names).enumerate() {
            let id = t["model"]["vocab"].as_object_mut().unwrap().remove(was).unwrap();
            t["model"]["vocab"][name] = id;
            t["added_tokens"][i]["content"] = json!(name);
        }
        let template = "{{ bos_token }}{% for m in messages %}{{ '<|' + {'system': 'sys', 'user': 'usr', 'assistant': 'bot'}[m['role']] + '|>' }}{{ m['content'] | trim }}<|eot|>{% endfor %}{% if add_generation_prompt %}<|bot|>{% endif %}";
        let config = json!({"bos_token": "<s>", "eos_token": {"content": "<|eot|>"}, "chat_template": template});
        Tokenizer::from_foreign_json(t.to_string(), &config, &json!({"eos_token_id": [tok.eos_id()]}), None).unwrap()
    }

    #[test]
    fn specials_and_encoding_follow_the_foreign_configs() {
        let tok = foreign();
        assert!(tok.is_foreign());
        assert_eq!(tok.bos_id(), tok.special_id("<s>").unwrap());
        assert_eq!(tok.eos_id(), tok.special_id("<|eot|>").unwrap());
        assert_eq!(tok.chat_stop_ids().len(), 2, "tokenizer_config's EOS and generation_config's");
        // NFC: a decomposed syllable encodes as the composed one.
        assert_eq!(tok.encode("\u{1100}\u{1161}\u{11A8}"), tok.encode("\u{AC01}"));
        // ignore_merges: a piece that is itself a vocabulary entry is that one token.
        let ids = tok.encode(" cat");
        assert_eq!(ids.len(), 1, "{ids:?}");
        assert_eq!(tok.decode(&tok.encode("대한민국 cat 1234")), "대한민국 cat 1234");
    }

    #[test]
    fn the_chat_template_renders_and_masks_each_assistant_reply() {
        let tok = foreign();
        let msgs = [
            Message::new(Role::System, "간결하게."),
            Message::new(Role::User, "안녕?"),
            Message::new(Role::Assistant, "안녕하세요!"),
            Message::new(Role::User, "cat?"),
            Message::new(Role::Assistant, "The cat sat."),
        ];
        let text = tok.render_template(&msgs, false).unwrap();
        assert_eq!(text, "<s><|sys|>간결하게.<|eot|><|usr|>안녕?<|eot|><|bot|>안녕하세요!<|eot|><|usr|>cat?<|eot|><|bot|>The cat sat.<|eot|>");
        let r = tok.render_chat(&msgs, false).unwrap();
        assert_eq!(r.ids, tok.encode_with_specials(&text), "segment-wise encoding equals the whole text's here");
        let targets: Vec<u32> = r.ids.iter().zip(&r.mask).filter(|(_, &m)| m).map(|(&id, _)| id).collect();
        assert_eq!(tok.decode(&targets), "안녕하세요!<|eot|>The cat sat.<|eot|>");
        let open = tok.render_chat(&msgs[..2], true).unwrap();
        assert_eq!(tok.decode(&open.ids), "<s><|sys|>간결하게.<|eot|><|usr|>안녕?<|eot|><|bot|>");
        assert!(tok.parse_chat(&open.ids).is_err(), "reading back is for jarip's own template");
    }

    #[test]
    fn what_is_not_byte_level_bpe_is_refused_by_name() {
        let tok = foreign();
        let mut t: Value = serde_json::from_str(tok.to_json()).unwrap();
        t["model"]["byte_fallback"] = json!(true);
        let e = Tokenizer::from_foreign_json(t.to_string(), &Value::Null, &Value::Null, None).unwrap_err();
        assert!(format!("{e:#}").contains("SentencePiece-style"), "{e:#}");
        let mut t: Value = serde_json::from_str(tok.to_json()).unwrap();
        t["normalizer"] = json!({"type": "Lowercase"});
        let e = Tokenizer::from_foreign_json(t.to_string(), &Value::Null, &Value::Null, None).unwrap_err();
        assert!(format!("{e:#}").contains("normalizer Lowercase"), "{e:#}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokenizer.model"), b"\x0a\x03abc").unwrap();
        let e = Tokenizer::load_foreign(dir.path()).unwrap_err();
        assert!(format!("{e:#}").contains("SentencePiece tokenizer.model"), "{e:#}");
        assert!(Tokenizer::load(&dir.path().join("x")).is_err());
        // jarip's own loader keeps refusing what it did not train.
        assert!(Tokenizer::from_json(tok.to_json().to_string()).is_err());
    }
}
