//! Corrupt and inconsistent model files: every case must return a typed error naming the
//! field, without panicking or allocating more than the file justifies.

#[allow(dead_code)]
mod model_support;

use std::collections::HashMap;

use focal::model::gguf::{Gguf, TensorType};
use focal::model::Model;
use focal::Error;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

/// A `tokenizer.json` with a four-token BPE vocabulary, for the Hugging Face cases.
const TINY_TOKENIZER_JSON: &[u8] = br#"{"version": "1.0", "truncation": null, "padding": null,
    "added_tokens": [], "normalizer": null, "pre_tokenizer": null, "post_processor": null,
    "decoder": null, "model": {"type": "BPE", "dropout": null, "unk_token": null,
    "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
    "byte_fallback": false, "vocab": {"a": 0, "b": 1, "ab": 2, "c": 3}, "merges": ["a b"]}}"#;

/// Writes GGUF files for the tests, value by value.
struct GgufWriter {
    version: u32,
    kv: Vec<u8>,
    kv_count: u64,
    infos: Vec<u8>,
    data: Vec<u8>,
    tensor_count: u64,
}

impl GgufWriter {
    fn new() -> Self {
        Self {
            version: 3,
            kv: Vec::new(),
            kv_count: 0,
            infos: Vec::new(),
            data: Vec::new(),
            tensor_count: 0,
        }
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }

    fn key(&mut self, key: &str, type_id: u32) {
        Self::string(&mut self.kv, key);
        self.kv.extend(type_id.to_le_bytes());
        self.kv_count += 1;
    }

    fn u32(mut self, key: &str, value: u32) -> Self {
        self.key(key, 4);
        self.kv.extend(value.to_le_bytes());
        self
    }

    fn f32(mut self, key: &str, value: f32) -> Self {
        self.key(key, 6);
        self.kv.extend(value.to_le_bytes());
        self
    }

    fn str(mut self, key: &str, value: &str) -> Self {
        self.key(key, 8);
        Self::string(&mut self.kv, value);
        self
    }

    fn strings(mut self, key: &str, values: &[&str]) -> Self {
        self.key(key, 9);
        self.kv.extend(8u32.to_le_bytes());
        self.kv.extend((values.len() as u64).to_le_bytes());
        for v in values {
            Self::string(&mut self.kv, v);
        }
        self
    }

    /// Adds an f32 tensor with ggml dims (innermost first) filled with `value`.
    fn tensor(mut self, name: &str, dims: &[u64], value: f32) -> Self {
        let elements: u64 = dims.iter().product();
        Self::string(&mut self.infos, name);
        self.infos.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            self.infos.extend(d.to_le_bytes());
        }
        self.infos.extend(0u32.to_le_bytes());
        self.infos.extend((self.data.len() as u64).to_le_bytes());
        for _ in 0..elements {
            self.data.extend(value.to_le_bytes());
        }
        while !self.data.len().is_multiple_of(32) {
            self.data.push(0);
        }
        self.tensor_count += 1;
        self
    }

    fn build(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend(self.tensor_count.to_le_bytes());
        out.extend(self.kv_count.to_le_bytes());
        out.extend(&self.kv);
        out.extend(&self.infos);
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
        out.extend(&self.data);
        out
    }
}

/// Returns the metadata of a tiny but complete Llama GGUF: 1 layer, 2 heads of size 4,
/// hidden 8, vocab 4.
/// A one-layer Llama with head size 32, the smallest the attention kernels support.
fn tiny_llama() -> GgufWriter {
    GgufWriter::new()
        .str("general.architecture", "llama")
        .u32("llama.block_count", 1)
        .u32("llama.context_length", 16)
        .u32("llama.embedding_length", 64)
        .u32("llama.feed_forward_length", 64)
        .u32("llama.attention.head_count", 2)
        .u32("llama.attention.head_count_kv", 1)
        .f32("llama.rope.freq_base", 10000.0)
        .f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
        .str("tokenizer.ggml.model", "gpt2")
        .strings("tokenizer.ggml.tokens", &["a", "b", "ab", "c"])
        .strings("tokenizer.ggml.merges", &["a b"])
}

fn with_tensors(writer: GgufWriter, skip: &str, wrong: &str) -> GgufWriter {
    let shapes: [(&str, &[u64]); 10] = [
        ("token_embd.weight", &[64, 4]),
        ("blk.0.attn_norm.weight", &[64]),
        ("blk.0.attn_q.weight", &[64, 64]),
        ("blk.0.attn_k.weight", &[64, 32]),
        ("blk.0.attn_v.weight", &[64, 32]),
        ("blk.0.attn_output.weight", &[64, 64]),
        ("blk.0.ffn_norm.weight", &[64]),
        ("blk.0.ffn_gate.weight", &[64, 64]),
        ("blk.0.ffn_up.weight", &[64, 64]),
        ("blk.0.ffn_down.weight", &[64, 64]),
    ];
    let mut writer = writer;
    for (name, dims) in shapes {
        if name == skip {
            continue;
        }
        writer = if name == wrong {
            writer.tensor(name, &[dims[0] * 2], 0.5)
        } else {
            writer.tensor(name, dims, 0.5)
        };
    }
    writer.tensor("output_norm.weight", &[64], 1.0)
}

#[track_caller]
fn assert_format_error<T: std::fmt::Debug>(result: focal::Result<T>, field_part: &str) {
    match result {
        Err(Error::Format { field, detail, .. }) => {
            assert!(
                field.contains(field_part),
                "error names field {field:?} ({detail}), expected one containing {field_part:?}"
            );
        }
        other => panic!("expected a format error on {field_part:?}, found {other:?}"),
    }
}

#[test]
fn tiny_file_parses() {
    let bytes = with_tensors(tiny_llama(), "", "").build();
    let gguf = Gguf::parse(&bytes).unwrap();
    assert_eq!(gguf.tensors.len(), 11);
    let (data, shape) = gguf.dequantize("blk.0.attn_k.weight").unwrap();
    assert_eq!(shape, vec![32, 64]);
    assert!(data.iter().all(|&v| v == 0.5));
}

#[test]
fn bad_magic_and_version() {
    let mut bytes = tiny_llama().build();
    bytes[0] = b'X';
    assert_format_error(Gguf::parse(&bytes), "magic");
    for version in [0u32, 1, 4, u32::MAX] {
        let mut writer = tiny_llama();
        writer.version = version;
        assert_format_error(Gguf::parse(&writer.build()), "version");
    }
    assert_format_error(Gguf::parse(b"GG"), "magic");
    assert_format_error(Gguf::parse(b""), "magic");
}

#[test]
fn huge_counts_are_rejected_before_allocating() {
    let mut writer = tiny_llama();
    writer.tensor_count = u64::MAX;
    assert_format_error(Gguf::parse(&writer.build()), "tensor_count");

    let mut writer = tiny_llama();
    writer.kv_count = u64::MAX / 2;
    assert_format_error(Gguf::parse(&writer.build()), "metadata_kv_count");

    // A key whose length claims 2^60 bytes.
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend(0u64.to_le_bytes());
    bytes.extend(1u64.to_le_bytes());
    bytes.extend((1u64 << 60).to_le_bytes());
    bytes.extend([0u8; 16]);
    assert_format_error(Gguf::parse(&bytes), "metadata key 0");

    // A string array whose count claims 2^62 items.
    let mut writer = GgufWriter::new();
    writer.key("tokens", 9);
    writer.kv.extend(8u32.to_le_bytes());
    writer.kv.extend((1u64 << 62).to_le_bytes());
    assert_format_error(Gguf::parse(&writer.build()), "tokens");
}

#[test]
fn bad_tensor_infos_are_rejected() {
    let mut writer = GgufWriter::new();
    GgufWriter::string(&mut writer.infos, "five_dims");
    writer.infos.extend(5u32.to_le_bytes());
    writer.tensor_count = 1;
    writer.infos.extend([0u8; 64]);
    assert_format_error(Gguf::parse(&writer.build()), "five_dims n_dims");

    let mut writer = GgufWriter::new();
    GgufWriter::string(&mut writer.infos, "huge");
    writer.infos.extend(2u32.to_le_bytes());
    writer.infos.extend(u64::MAX.to_le_bytes());
    writer.infos.extend(4u64.to_le_bytes());
    writer.infos.extend(0u32.to_le_bytes());
    writer.infos.extend(0u64.to_le_bytes());
    writer.tensor_count = 1;
    assert_format_error(Gguf::parse(&writer.build()), "huge dims");

    let mut writer = GgufWriter::new().tensor("t", &[4], 1.0);
    // Move the tensor's offset far past the end of the file.
    let at = writer.infos.len() - 8;
    writer.infos[at..].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert_format_error(Gguf::parse(&writer.build()), "t offset");

    let mut writer = GgufWriter::new().tensor("t", &[4], 1.0);
    let at = writer.infos.len() - 8;
    writer.infos[at..].copy_from_slice(&3u64.to_le_bytes());
    assert_format_error(Gguf::parse(&writer.build()), "t offset");
}

#[test]
fn truncated_files_are_rejected() {
    let bytes = with_tensors(tiny_llama(), "", "").build();
    for len in [3, 8, 20, 24, 100, bytes.len() / 2, bytes.len() - 1] {
        let result = Gguf::parse(&bytes[..len]);
        assert!(
            matches!(result, Err(Error::Format { .. })),
            "truncated to {len} of {} bytes: {result:?}",
            bytes.len()
        );
    }
    if let Some(real) = model_support::model_bytes() {
        for len in [1 << 10, 1 << 20, real.len() / 2, real.len() - 1] {
            let result = Gguf::parse(&real[..len]);
            assert!(
                matches!(result, Err(Error::Format { .. })),
                "real file cut to {len}"
            );
        }
    }
}

#[test]
fn unsupported_tensor_type_is_named() {
    let mut writer = GgufWriter::new().tensor("q4k", &[256], 1.0);
    // Set the type field (4 bytes before the offset) to ggml's Q4_K (12).
    let at = writer.infos.len() - 12;
    writer.infos[at..at + 4].copy_from_slice(&12u32.to_le_bytes());
    let bytes = writer.build();
    let gguf = Gguf::parse(&bytes).unwrap();
    assert_eq!(gguf.tensors[0].kind, TensorType::Other(12));
    match gguf.dequantize("q4k") {
        Err(Error::UnsupportedTensorType { tensor, kind }) => {
            assert_eq!(tensor, "q4k");
            assert!(kind.contains("12"), "{kind}");
        }
        other => panic!("expected UnsupportedTensorType, found {other:?}"),
    }
    assert!(matches!(
        gguf.dequantize("absent"),
        Err(Error::MissingTensor(_))
    ));
}

#[test]
fn missing_and_misshapen_tensors_are_named() {
    let Some(ctx) = focal_tests::gpu() else {
        return;
    };
    let complete = with_tensors(tiny_llama(), "", "").build();
    let model = Model::from_gguf(&ctx, &complete, &mut |_, _| {}).unwrap();
    let mut seq = model.new_sequence().unwrap();
    let logits = model.forward_blocking(&mut seq, &[0, 1, 2]).unwrap();
    assert_eq!(logits.len(), 4);
    assert!(logits.iter().all(|v| v.is_finite()), "{logits:?}");

    let missing = with_tensors(tiny_llama(), "blk.0.attn_v.weight", "").build();
    match Model::from_gguf(&ctx, &missing, &mut |_, _| {}) {
        Err(Error::MissingTensor(name)) => assert_eq!(name, "blk.0.attn_v.weight"),
        other => panic!("expected MissingTensor, found {:?}", other.err()),
    }

    let misshapen = with_tensors(tiny_llama(), "", "blk.0.ffn_up.weight").build();
    assert_format_error(
        Model::from_gguf(&ctx, &misshapen, &mut |_, _| {}),
        "blk.0.ffn_up.weight",
    );

    let no_heads = with_tensors(tiny_llama().u32("llama.attention.head_count", 0), "", "");
    assert!(matches!(
        Model::from_gguf(&ctx, &no_heads.build(), &mut |_, _| {}),
        Err(Error::Format { .. })
    ));
}

#[test]
fn corrupt_safetensors_are_rejected() {
    let Some(ctx) = focal_tests::gpu() else {
        return;
    };
    let config = br#"{"num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
        "hidden_size": 8, "intermediate_size": 8, "vocab_size": 4, "hidden_act": "silu"}"#;
    let tokenizer = TINY_TOKENIZER_JSON;

    let header = |json: &str, extra: usize| {
        let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
        bytes.extend(json.as_bytes());
        bytes.extend(vec![0u8; extra]);
        bytes
    };
    let claims_too_much = 1u64 << 40;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty file", Vec::new()),
        ("header longer than the file", {
            let mut b = claims_too_much.to_le_bytes().to_vec();
            b.extend(b"{}");
            b
        }),
        ("header is not JSON", header("not json", 0)),
        (
            "data offsets past the end",
            header(
                r#"{"model.norm.weight": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}}"#,
                16,
            ),
        ),
    ];
    for (case, bytes) in cases {
        let result = Model::from_hf(&ctx, config, &bytes, tokenizer, None, &mut |_, _| {});
        match result {
            Err(Error::Format { format, .. }) => assert_eq!(format, "safetensors", "{case}"),
            other => panic!(
                "{case}: expected a safetensors format error, found {:?}",
                other.err()
            ),
        }
    }

    let valid_but_empty = header("{}", 0);
    let result = Model::from_hf(
        &ctx,
        config,
        &valid_but_empty,
        tokenizer,
        None,
        &mut |_, _| {},
    );
    assert!(
        matches!(result, Err(Error::MissingTensor(_))),
        "{:?}",
        result.err()
    );
}

/// Returns config.json of the Hugging Face form of `tiny_llama`, with `extra` fields added.
fn tiny_hf_config(extra: &str) -> Vec<u8> {
    let mut text = r#"{"num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 1, "hidden_size": 64, "intermediate_size": 64,
        "vocab_size": 4, "max_position_embeddings": 16, "hidden_act": "silu""#
        .to_string();
    if !extra.is_empty() {
        text.push_str(", ");
        text.push_str(extra);
    }
    text.push('}');
    text.into_bytes()
}

/// Returns model.safetensors of the Hugging Face form of `tiny_llama`, in f32. Every
/// weight is 0.02 except the LM head, whose row `i` is `0.05 * i`, so a tied head gives
/// four equal logits and an untied one four different ones.
fn tiny_hf_safetensors(with_lm_head: bool) -> Vec<u8> {
    let mut shapes: Vec<(&str, Vec<usize>)> = vec![
        ("model.embed_tokens.weight", vec![4, 64]),
        ("model.layers.0.input_layernorm.weight", vec![64]),
        ("model.layers.0.self_attn.q_proj.weight", vec![64, 64]),
        ("model.layers.0.self_attn.k_proj.weight", vec![32, 64]),
        ("model.layers.0.self_attn.v_proj.weight", vec![32, 64]),
        ("model.layers.0.self_attn.o_proj.weight", vec![64, 64]),
        ("model.layers.0.post_attention_layernorm.weight", vec![64]),
        ("model.layers.0.mlp.gate_proj.weight", vec![64, 64]),
        ("model.layers.0.mlp.up_proj.weight", vec![64, 64]),
        ("model.layers.0.mlp.down_proj.weight", vec![64, 64]),
        ("model.norm.weight", vec![64]),
    ];
    if with_lm_head {
        shapes.push(("lm_head.weight", vec![4, 64]));
    }
    let data: Vec<(Vec<usize>, Vec<u8>)> = shapes
        .iter()
        .map(|(name, shape)| {
            let count: usize = shape.iter().product();
            let bytes = (0..count)
                .flat_map(|i| {
                    let value = if *name == "lm_head.weight" {
                        0.05 * (i / 64) as f32
                    } else {
                        0.02
                    };
                    value.to_le_bytes()
                })
                .collect();
            (shape.clone(), bytes)
        })
        .collect();
    let views: Vec<(&str, TensorView<'_>)> = shapes
        .iter()
        .zip(&data)
        .map(|((name, _), (shape, bytes))| {
            (
                *name,
                TensorView::new(Dtype::F32, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    safetensors::tensor::serialize(views, None::<HashMap<String, String>>).unwrap()
}

/// Returns the logits of the last of three tokens.
fn tiny_logits(model: &Model) -> Vec<f32> {
    let mut seq = model.new_sequence().unwrap();
    let logits = model.forward_blocking(&mut seq, &[0, 1, 2]).unwrap();
    assert_eq!(logits.len(), 4);
    assert!(logits.iter().all(|v| v.is_finite()), "{logits:?}");
    logits
}

#[test]
fn untied_hf_model_needs_lm_head() {
    let Some(ctx) = focal_tests::gpu() else {
        return;
    };
    let without_head = tiny_hf_safetensors(false);
    let with_head = tiny_hf_safetensors(true);
    let load = |extra: &str, weights: &[u8], uploads: &mut usize| {
        let config = tiny_hf_config(extra);
        let progress = &mut |_: usize, _: usize| *uploads += 1;
        Model::from_hf(&ctx, &config, weights, TINY_TOKENIZER_JSON, None, progress)
    };

    // transformers' LlamaConfig defaults tie_word_embeddings to false, so an absent or
    // null field needs lm_head.weight as much as an explicit false.
    for extra in [
        "",
        r#""tie_word_embeddings": false"#,
        r#""tie_word_embeddings": null"#,
    ] {
        let mut uploads = 0;
        match load(extra, &without_head, &mut uploads) {
            Err(Error::MissingTensor(name)) => assert_eq!(name, "lm_head.weight", "{extra:?}"),
            other => panic!("{extra:?}: expected MissingTensor, found {:?}", other.err()),
        }
        assert_eq!(uploads, 0, "{extra:?}: tensors uploaded before the error");
    }

    let mut uploads = 0;
    let tied = load(
        r#""tie_word_embeddings": true"#,
        &without_head,
        &mut uploads,
    )
    .unwrap();
    let logits = tiny_logits(&tied);
    assert!(
        logits.iter().all(|&v| v == logits[0]),
        "tied head over equal embedding rows: {logits:?}"
    );
    assert!(uploads > 0, "progress was reported");

    for extra in ["", r#""tie_word_embeddings": false"#] {
        let untied = load(extra, &with_head, &mut 0).unwrap();
        let logits = tiny_logits(&untied);
        assert!(
            logits.windows(2).all(|pair| pair[0] != pair[1]),
            "{extra:?}: lm_head.weight rows differ, so the logits must: {logits:?}"
        );
    }

    assert_format_error(
        load(r#""tie_word_embeddings": "yes""#, &with_head, &mut 0),
        "tie_word_embeddings",
    );
}
