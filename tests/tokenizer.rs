//! The tokenizer built from the GGUF metadata: reference token ids, round trips and the
//! chat template. Needs the model file but no GPU.

#[allow(dead_code)]
mod model_support;

use focal::model::gguf::Gguf;
use focal::model::{ChatMessage, Tokenizer};
use model_support::{model_bytes, reference};

fn tokenizer() -> Option<Tokenizer> {
    let bytes = model_bytes()?;
    let gguf = Gguf::parse(bytes).unwrap();
    Some(Tokenizer::from_gguf(&gguf).unwrap())
}

#[test]
fn token_ids_match_reference() {
    let Some(tokenizer) = tokenizer() else { return };
    for (text, want) in reference().tokenizer {
        let ids = tokenizer.encode(&text).unwrap();
        assert_eq!(ids, want, "token ids of {text:?}");
    }
}

#[test]
fn text_round_trips() {
    let Some(tokenizer) = tokenizer() else { return };
    let texts = [
        "plain ASCII text, with punctuation!",
        "accents: café, crème brûlée, Ångström, naïve",
        "emoji: 🙂🚀👩‍💻🇫🇷",
        "digits: 3.14159 and 1234567890",
        "code: fn main() { println!(\"{}\", 1 << 4); }\n\tindent\r\n",
        "mixed 日本語 and Ελληνικά",
        "",
    ];
    for text in texts {
        let ids = tokenizer.encode(text).unwrap();
        let back = tokenizer.decode(&ids, false).unwrap();
        assert_eq!(back, text, "round trip of {text:?} through {ids:?}");
    }
}

#[test]
fn digits_split_one_by_one() {
    let Some(tokenizer) = tokenizer() else { return };
    let ids = tokenizer.encode("2024").unwrap();
    assert_eq!(ids.len(), 4, "{ids:?}");
    for (id, digit) in ids.iter().zip(["2", "0", "2", "4"]) {
        assert_eq!(tokenizer.token_label(*id), digit);
    }
}

#[test]
fn control_tokens_are_special() {
    let Some(tokenizer) = tokenizer() else { return };
    let ids = tokenizer.encode("<|im_start|>user<|im_end|>").unwrap();
    assert_eq!(ids.first(), Some(&1), "{ids:?}");
    assert_eq!(ids.last(), Some(&2), "{ids:?}");
    assert!(tokenizer.is_stop_token(2), "<|im_end|> ends a turn");
    assert_eq!(tokenizer.decode(&ids, true).unwrap(), "user");
}

#[test]
fn chat_template_renders_chatml() {
    let Some(tokenizer) = tokenizer() else { return };
    let text = tokenizer
        .apply_chat_template(&[ChatMessage::new("user", "Hi")], true)
        .unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
         Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}
