//! Tokenizer and chat template: a `tokenizers::Tokenizer` built from GGUF metadata or
//! loaded from `tokenizer.json`, plus the model's Jinja chat template rendered with
//! minijinja.

use std::collections::HashSet;

use serde::Serialize;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper};

use super::gguf::{Gguf, Value};
use crate::{Error, Result};

/// llama.cpp's token type for control tokens such as `<|im_start|>`.
const TOKEN_TYPE_CONTROL: i64 = 3;
/// llama.cpp's token type for user-defined tokens, which match whole but decode as text.
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// One chat message, as the chat template receives it.
#[derive(Clone, Debug, Serialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

/// A model's tokenizer with its special tokens and chat template.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    chat_template: Option<String>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    /// Tokens that end generation: EOS plus the end-of-turn tokens.
    stop_tokens: HashSet<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

fn tokenizer_error(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

fn format_error(field: &str, detail: impl Into<String>) -> Error {
    Error::Format {
        format: "GGUF",
        field: field.to_string(),
        detail: detail.into(),
    }
}

fn string_array<'a>(gguf: &'a Gguf<'_>, key: &str) -> Result<Vec<&'a str>> {
    let items = gguf
        .get(key)
        .ok_or_else(|| format_error(key, "missing metadata key"))?
        .as_array()
        .ok_or_else(|| format_error(key, "expected an array of strings"))?;
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str()
                .ok_or_else(|| format_error(key, format!("item {i} is not a string: {v:?}")))
        })
        .collect()
}

fn optional_id(gguf: &Gguf<'_>, key: &str, vocab: usize) -> Result<Option<u32>> {
    let Some(value) = gguf.get(key) else {
        return Ok(None);
    };
    match value.as_u64() {
        Some(id) if (id as usize) < vocab => Ok(Some(id as u32)),
        _ => Err(format_error(
            key,
            format!("{value:?} is not a token id below the vocabulary size {vocab}"),
        )),
    }
}

impl Tokenizer {
    /// Builds the tokenizer described by the `tokenizer.ggml.*` metadata of a GGUF file.
    ///
    /// Supports the byte-level BPE (`gpt2`) model: control tokens become special tokens
    /// and digits are split one by one before byte-level pre-tokenisation, as the SmolLM
    /// and Llama 3 `pre` types do. Errors name the metadata key that is missing or invalid.
    pub fn from_gguf(gguf: &Gguf<'_>) -> Result<Self> {
        let model = gguf.require_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(format_error(
                "tokenizer.ggml.model",
                format!("tokenizer model {model:?} is not supported (expected \"gpt2\")"),
            ));
        }
        let tokens = string_array(gguf, "tokenizer.ggml.tokens")?;
        let merges = string_array(gguf, "tokenizer.ggml.merges")?;
        let types: Vec<i64> = match gguf.get("tokenizer.ggml.token_type") {
            None => vec![1; tokens.len()],
            Some(Value::Array(items)) if items.len() == tokens.len() => items
                .iter()
                .map(|v| match *v {
                    Value::I32(t) => t as i64,
                    _ => v.as_u64().map_or(1, |t| t as i64),
                })
                .collect(),
            Some(_) => {
                return Err(format_error(
                    "tokenizer.ggml.token_type",
                    format!("expected an array of {} integers", tokens.len()),
                ))
            }
        };

        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(id, token)| (token.to_string(), id as u32))
            .collect();
        let mut merge_pairs = Vec::with_capacity(merges.len());
        for (index, merge) in merges.iter().enumerate() {
            let (left, right) = merge.split_once(' ').ok_or_else(|| {
                format_error(
                    "tokenizer.ggml.merges",
                    format!("merge {index} {merge:?} is not two tokens separated by a space"),
                )
            })?;
            merge_pairs.push((left.to_string(), right.to_string()));
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merge_pairs)
            .build()
            .map_err(tokenizer_error)?;

        let mut inner = tokenizers::Tokenizer::new(bpe);
        let pre: Vec<PreTokenizerWrapper> = vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ];
        inner.with_pre_tokenizer(Some(Sequence::new(pre)));
        inner.with_decoder(Some(ByteLevelDecoder::default()));

        let special: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &t)| t == TOKEN_TYPE_CONTROL)
            .map(|(token, _)| AddedToken::from(token.to_string(), true))
            .collect();
        inner.add_special_tokens(special).map_err(tokenizer_error)?;
        let user_defined: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &t)| t == TOKEN_TYPE_USER_DEFINED)
            .map(|(token, _)| AddedToken::from(token.to_string(), false))
            .collect();
        inner.add_tokens(user_defined).map_err(tokenizer_error)?;

        let bos = optional_id(gguf, "tokenizer.ggml.bos_token_id", tokens.len())?;
        let eos = optional_id(gguf, "tokenizer.ggml.eos_token_id", tokens.len())?;
        let add_bos = gguf
            .get("tokenizer.ggml.add_bos_token")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let chat_template = gguf
            .get("tokenizer.chat_template")
            .and_then(Value::as_str)
            .map(str::to_string);
        Ok(Self::assemble(inner, chat_template, bos, eos, add_bos))
    }

    /// Loads a `tokenizer.json` file's contents, with the chat template and special
    /// tokens from `tokenizer_config.json` when given.
    pub fn from_json(tokenizer_json: &[u8], tokenizer_config: Option<&[u8]>) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(tokenizer_json).map_err(tokenizer_error)?;
        let config: serde_json::Value = match tokenizer_config {
            Some(bytes) => serde_json::from_slice(bytes).map_err(|e| Error::Format {
                format: "tokenizer_config.json",
                field: "(root)".into(),
                detail: e.to_string(),
            })?,
            None => serde_json::Value::Null,
        };
        let token_id = |key: &str| {
            let token = config.get(key)?;
            let text = token.as_str().or_else(|| token.get("content")?.as_str())?;
            inner.token_to_id(text)
        };
        let bos = token_id("bos_token");
        // Without a config, fall back to the ChatML and GPT-2 end tokens if present.
        let eos = token_id("eos_token")
            .or_else(|| inner.token_to_id("<|im_end|>"))
            .or_else(|| inner.token_to_id("<|endoftext|>"));
        let add_bos = config
            .get("add_bos_token")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false);
        let chat_template = config
            .get("chat_template")
            .and_then(serde_json::Value::as_str)
            .map(str::to_string);
        Ok(Self::assemble(inner, chat_template, bos, eos, add_bos))
    }

    fn assemble(
        inner: tokenizers::Tokenizer,
        chat_template: Option<String>,
        bos: Option<u32>,
        eos: Option<u32>,
        add_bos: bool,
    ) -> Self {
        let mut stop_tokens: HashSet<u32> = eos.into_iter().collect();
        for name in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>"] {
            if let Some(id) = inner.token_to_id(name) {
                stop_tokens.insert(id);
            }
        }
        Self {
            inner,
            chat_template,
            bos,
            eos,
            add_bos,
            stop_tokens,
        }
    }

    /// Returns the wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// Returns true for tokens that end generation (EOS and end-of-turn tokens).
    pub fn is_stop_token(&self, id: u32) -> bool {
        self.stop_tokens.contains(&id)
    }

    /// Encodes text to token ids, matching special tokens written in the text and adding
    /// BOS when the model's metadata requests it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self.inner.encode(text, false).map_err(tokenizer_error)?;
        let mut ids = Vec::with_capacity(encoding.len() + 1);
        if self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(encoding.get_ids());
        Ok(ids)
    }

    /// Decodes token ids to text, keeping special tokens when `skip_special` is false.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(tokenizer_error)
    }

    /// Returns the text of one token as the vocabulary spells it, for labels.
    pub fn token_label(&self, id: u32) -> String {
        self.decode(&[id], false)
            .unwrap_or_else(|_| format!("<{id}>"))
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Renders the chat template for `messages`, ending with the assistant's turn
    /// opener when `add_generation_prompt` is set.
    ///
    /// Errors when the model has no chat template or the template fails to render.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or_else(|| Error::Tokenizer("the model has no chat template".into()))?;
        let mut env = minijinja::Environment::new();
        env.add_function("raise_exception", |message: String| -> Result<String, _> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                message,
            ))
        });
        let label = |id: Option<u32>| {
            id.and_then(|id| self.inner.id_to_token(id))
                .unwrap_or_default()
        };
        env.render_str(
            template,
            minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => label(self.bos),
                eos_token => label(self.eos),
            },
        )
        .map_err(|e| Error::Tokenizer(format!("rendering the chat template failed: {e}")))
    }
}
