//! The real SmolLM2-135M-Instruct model on the real adapter: answers, cache
//! consistency, forks, capture and head roles.

mod model_support;

use focal::model::{ChatMessage, GenerateOptions, Generator};
use model_support::model;

const SYSTEM: &str = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";
const QUESTION: &str = "What is the capital of France?";

fn chat_prompt(model: &focal::model::Model) -> Vec<u32> {
    let text = model
        .tokenizer()
        .apply_chat_template(
            &[
                ChatMessage::new("system", SYSTEM),
                ChatMessage::new("user", QUESTION),
            ],
            true,
        )
        .unwrap();
    model.tokenizer().encode(&text).unwrap()
}

#[test]
fn greedy_chat_answer_names_paris() {
    let Some(model) = model() else { return };
    let prompt = chat_prompt(&model);
    assert_eq!(prompt.len(), 37, "chat prompt tokens: {prompt:?}");
    assert_eq!(prompt[0], 1, "the prompt starts with <|im_start|>");
    let mut generator = Generator::new(&model, &prompt, GenerateOptions::greedy(8)).unwrap();
    let mut text = String::new();
    generator
        .run_blocking(|step| {
            text.push_str(&step.text);
            true
        })
        .unwrap();
    eprintln!("answer: {text:?}");
    assert!(
        text.contains("Paris"),
        "answer {text:?} does not name Paris"
    );
}
