//! The chat template: the one rendering of OpenAI-style messages into token ids, used by
//! fine-tuning, inference and the server alike.
//!
//! ```text
//! <|bos|><|system|>You are jarip.<|end|><|user|>안녕?<|end|><|assistant|>안녕하세요!<|end|>
//! ```
//!
//! Role markers and `<|end|>` are special tokens; message content is encoded as ordinary text,
//! so a user who types `<|end|>` gets those characters, never the control token. For training,
//! the mask marks the tokens the model must learn to produce: each assistant message's content
//! and its closing `<|end|>` (so it learns to stop), nothing else.

use crate::Tokenizer;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn token(self) -> &'static str {
        match self {
            Role::System => "<|system|>",
            Role::User => "<|user|>",
            Role::Assistant => "<|assistant|>",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into() }
    }
}

/// Token ids of a rendered conversation and, per id, whether it is a training target.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rendered {
    pub ids: Vec<u32>,
    pub mask: Vec<bool>,
}

/// The template as text, for documentation and debugging.
pub fn render_text(messages: &[Message], add_generation_prompt: bool) -> String {
    let mut s = String::from("<|bos|>");
    for m in messages {
        s.push_str(m.role.token());
        s.push_str(&m.content);
        s.push_str("<|end|>");
    }
    if add_generation_prompt {
        s.push_str(Role::Assistant.token());
    }
    s
}

/// A system message may only open a conversation.
pub fn check_order(messages: &[Message]) -> Result<()> {
    if messages.is_empty() {
        bail!("the conversation has no messages");
    }
    if let Some(i) = messages.iter().skip(1).position(|m| m.role == Role::System) {
        bail!("message {}: a system message may only come first", i + 2);
    }
    Ok(())
}

impl Tokenizer {
    fn special(&self, token: &str) -> u32 {
        self.special_id(token).expect("every jarip tokenizer has the chat special tokens")
    }

    /// Renders `messages`; with `add_generation_prompt` the ids end with `<|assistant|>`,
    /// ready for the model to write the reply.
    pub fn render_chat(&self, messages: &[Message], add_generation_prompt: bool) -> Result<Rendered> {
        check_order(messages)?;
        if self.is_foreign() {
            return self.render_chat_foreign(messages, add_generation_prompt);
        }
        let end = self.special("<|end|>");
        let mut r = Rendered { ids: vec![self.bos_id()], mask: vec![false] };
        for m in messages {
            r.ids.push(self.special(m.role.token()));
            r.mask.push(false);
            let content = self.encode(&m.content);
            let target = m.role == Role::Assistant;
            r.mask.extend(std::iter::repeat_n(target, content.len() + 1));
            r.ids.extend(content);
            r.ids.push(end);
        }
        if add_generation_prompt {
            r.ids.push(self.special(Role::Assistant.token()));
            r.mask.push(false);
        }
        Ok(r)
    }

    /// Reads rendered ids back into messages (an open trailing `<|assistant|>` is allowed and
    /// ignored). The inverse of [`Tokenizer::render_chat`].
    pub fn parse_chat(&self, ids: &[u32]) -> Result<Vec<Message>> {
        if self.is_foreign() {
            bail!("reading conversations back is for jarip's own template");
        }
        let end = self.special("<|end|>");
        let roles = [Role::System, Role::User, Role::Assistant].map(|r| (self.special(r.token()), r));
        let Some((&first, mut rest)) = ids.split_first() else { bail!("no tokens") };
        if first != self.bos_id() {
            bail!("a conversation starts with <|bos|>");
        }
        let mut out = Vec::new();
        while let Some((&marker, after)) = rest.split_first() {
            let Some(&(_, role)) = roles.iter().find(|(id, _)| *id == marker) else {
                bail!("token {marker} where a role marker was expected");
            };
            let Some(len) = after.iter().position(|&t| t == end) else {
                if role == Role::Assistant && after.is_empty() {
                    break;
                }
                bail!("message {} is not closed by <|end|>", out.len() + 1);
            };
            let content = String::from_utf8(self.decode_bytes(&after[..len]))?;
            out.push(Message { role, content });
            rest = &after[len + 1..];
        }
        check_order(&out)?;
        Ok(out)
    }
}
