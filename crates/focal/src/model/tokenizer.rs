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

fn tokenizer_config_error(field: &str, detail: impl Into<String>) -> Error {
    Error::Format {
        format: "tokenizer_config.json",
        field: field.to_string(),
        detail: detail.into(),
    }
}

/// Reads the `chat_template` field of `tokenizer_config.json`: absent or null, a string, or
/// a list of `{"name", "template"}` objects.
fn config_chat_template(config: &serde_json::Value) -> Result<Option<String>> {
    use serde_json::Value;

    let items = match config.get("chat_template") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(template)) => return Ok(Some(template.clone())),
        Some(Value::Array(items)) => items,
        Some(other) => {
            let kind = match other {
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a number",
                _ => "an object",
            };
            return Err(tokenizer_config_error(
                "chat_template",
                format!("expected a string or a list of {{name, template}} objects, found {kind}"),
            ));
        }
    };
    let mut templates: Vec<(&str, &str)> = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let text = |key: &str| {
            item.get(key).and_then(Value::as_str).ok_or_else(|| {
                tokenizer_config_error(
                    "chat_template",
                    format!("item {index} has no string \"{key}\" field"),
                )
            })
        };
        let (name, template) = (text("name")?, text("template")?);
        if templates.iter().any(|&(seen, _)| seen == name) {
            return Err(tokenizer_config_error(
                "chat_template",
                format!("item {index} repeats the template name {name:?}"),
            ));
        }
        templates.push((name, template));
    }
    if let Some(&(_, template)) = templates.iter().find(|&&(name, _)| name == "default") {
        return Ok(Some(template.to_string()));
    }
    let Some(&(first, template)) = templates.first() else {
        return Err(tokenizer_config_error(
            "chat_template",
            "the list contains no templates",
        ));
    };
    // NOTE: transformers' `get_chat_template` raises an error for a list without a
    // "default" entry unless the caller names a template. This loader takes the first.
    let names: Vec<&str> = templates.iter().map(|&(name, _)| name).collect();
    log::warn!(
        "tokenizer_config.json has no \"default\" chat template among {names:?}; using {first:?}"
    );
    Ok(Some(template.to_string()))
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
    ///
    /// Calls [`Tokenizer::from_hf`] without a `chat_template.jinja` file.
    pub fn from_json(tokenizer_json: &[u8], tokenizer_config: Option<&[u8]>) -> Result<Self> {
        Self::from_hf(tokenizer_json, tokenizer_config, None)
    }

    /// Loads the tokenizer of a Hugging Face model folder from the contents of
    /// `tokenizer.json`, `tokenizer_config.json` and `chat_template.jinja` (the last two
    /// when present).
    ///
    /// `chat_template.jinja` replaces the template in `tokenizer_config.json`, as
    /// transformers does when it loads a folder that has both, so a malformed
    /// `chat_template` field is then not read. That field may be a string or a list of
    /// `{"name", "template"}` objects, from which the one named `default` is taken, else
    /// the first. Errors: [`Error::Tokenizer`] for an invalid `tokenizer.json`, and
    /// [`Error::Format`] naming the file and field for invalid JSON, a malformed
    /// `chat_template` or a `chat_template.jinja` that is not UTF-8.
    pub fn from_hf(
        tokenizer_json: &[u8],
        tokenizer_config: Option<&[u8]>,
        chat_template_file: Option<&[u8]>,
    ) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(tokenizer_json).map_err(tokenizer_error)?;
        let config: serde_json::Value = match tokenizer_config {
            Some(bytes) => serde_json::from_slice(bytes)
                .map_err(|e| tokenizer_config_error("(root)", e.to_string()))?,
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
        let chat_template = match chat_template_file {
            Some(bytes) => {
                if config.get("chat_template").is_some_and(|v| !v.is_null()) {
                    log::info!(
                        "using chat_template.jinja in place of the chat template in \
                         tokenizer_config.json"
                    );
                }
                let text = std::str::from_utf8(bytes).map_err(|e| Error::Format {
                    format: "chat_template.jinja",
                    field: "(contents)".into(),
                    detail: format!("not UTF-8: {e}"),
                })?;
                Some(text.to_string())
            }
            None => config_chat_template(&config)?,
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A `tokenizer.json` with a four-token BPE vocabulary.
    const TOKENIZER_JSON: &[u8] = br#"{"version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [], "normalizer": null, "pre_tokenizer": null, "post_processor": null,
        "decoder": null, "model": {"type": "BPE", "dropout": null, "unk_token": null,
        "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
        "byte_fallback": false, "vocab": {"a": 0, "b": 1, "ab": 2, "c": 3}, "merges": ["a b"]}}"#;

    /// Loads the test tokenizer with `chat_template_field` as the value of
    /// `tokenizer_config.json`'s `chat_template` field, or without the field when empty.
    fn load(chat_template_field: &str, jinja: Option<&[u8]>) -> Result<Tokenizer> {
        let config = if chat_template_field.is_empty() {
            "{}".to_string()
        } else {
            format!(r#"{{"chat_template": {chat_template_field}}}"#)
        };
        Tokenizer::from_hf(TOKENIZER_JSON, Some(config.as_bytes()), jinja)
    }

    fn template(chat_template_field: &str) -> Option<String> {
        let tokenizer = load(chat_template_field, None).unwrap();
        tokenizer.chat_template().map(str::to_string)
    }

    /// Checks that the result is a tokenizer_config.json format error on `chat_template`
    /// whose detail contains `detail_part`.
    fn assert_template_error(result: Result<Tokenizer>, detail_part: &str) {
        match result {
            Err(Error::Format {
                format,
                field,
                detail,
            }) => {
                assert_eq!(format, "tokenizer_config.json");
                assert_eq!(field, "chat_template");
                assert!(detail.contains(detail_part), "detail {detail:?}");
            }
            other => panic!("expected a chat_template format error, found {other:?}"),
        }
    }

    #[test]
    fn chat_template_string_and_null() {
        assert_eq!(template(r#""{{ 1 }}""#).as_deref(), Some("{{ 1 }}"));
        assert_eq!(template("null"), None);
        assert_eq!(template(""), None);
        let without_config = Tokenizer::from_json(TOKENIZER_JSON, None).unwrap();
        assert_eq!(without_config.chat_template(), None);
    }

    #[test]
    fn chat_template_list_prefers_default() {
        let list = r#"[{"name": "tool_use", "template": "tools"},
            {"name": "default", "template": "plain"}]"#;
        assert_eq!(template(list).as_deref(), Some("plain"));
        let no_default = r#"[{"name": "rag", "template": "first"},
            {"name": "tool_use", "template": "second"}]"#;
        assert_eq!(template(no_default).as_deref(), Some("first"));
    }

    #[test]
    fn chat_template_list_renders() {
        let list = r#"[{"name": "default",
            "template": "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"}]"#;
        let tokenizer = load(list, None).unwrap();
        let text = tokenizer
            .apply_chat_template(&[ChatMessage::new("user", "hi")], false)
            .unwrap();
        assert_eq!(text, "<user>hi");
    }

    #[test]
    fn malformed_chat_template_is_named() {
        assert_template_error(load("42", None), "found a number");
        assert_template_error(load("true", None), "found a boolean");
        assert_template_error(load(r#"{"default": "x"}"#, None), "found an object");
        assert_template_error(load("[]", None), "no templates");
        assert_template_error(load(r#"["x"]"#, None), "item 0 has no string \"name\"");
        assert_template_error(
            load(r#"[{"name": "default", "template": 1}]"#, None),
            "item 0 has no string \"template\"",
        );
        assert_template_error(
            load(
                r#"[{"name": "a", "template": "x"}, {"template": "y"}]"#,
                None,
            ),
            "item 1 has no string \"name\"",
        );
        assert_template_error(
            load(
                r#"[{"name": "a", "template": "x"}, {"name": "a", "template": "y"}]"#,
                None,
            ),
            "repeats the template name \"a\"",
        );
    }

    #[test]
    fn jinja_file_replaces_config_template() {
        let file = Some("{{ 'from the file' }}".as_bytes());
        let tokenizer = load(r#""from the config""#, file).unwrap();
        assert_eq!(tokenizer.chat_template(), Some("{{ 'from the file' }}"));
        let rendered = tokenizer.apply_chat_template(&[], false).unwrap();
        assert_eq!(rendered, "from the file");

        // The file also applies without tokenizer_config.json, and a malformed config
        // field is not read when the file replaces it.
        let alone = Tokenizer::from_hf(TOKENIZER_JSON, None, file).unwrap();
        assert_eq!(alone.chat_template(), Some("{{ 'from the file' }}"));
        let over_malformed = load("42", file).unwrap();
        assert_eq!(
            over_malformed.chat_template(),
            Some("{{ 'from the file' }}")
        );
    }

    #[test]
    fn jinja_file_must_be_utf8() {
        match load("", Some(&[b'{', 0xff, b'}'])) {
            Err(Error::Format { format, detail, .. }) => {
                assert_eq!(format, "chat_template.jinja");
                assert!(detail.contains("UTF-8"), "detail {detail:?}");
            }
            other => panic!("expected a chat_template.jinja format error, found {other:?}"),
        }
    }

    #[test]
    fn invalid_tokenizer_config_is_named() {
        let result = Tokenizer::from_hf(TOKENIZER_JSON, Some(b"{not json"), None);
        match result {
            Err(Error::Format { format, field, .. }) => {
                assert_eq!(format, "tokenizer_config.json");
                assert_eq!(field, "(root)");
            }
            other => panic!("expected a tokenizer_config.json format error, found {other:?}"),
        }
    }
}
