//! Model weights on the GPU, loaded from GGUF or safetensors by their GGUF names.
//!
//! Projection weights are uploaded as `[out, in]` matrices in f16 where the adapter has
//! shader-f16 and in f32 otherwise; norms stay f32. Q, K and V are fused into one
//! `[q + 2 kv, hidden]` matrix and the MLP gate and up into one `[2 ffn, hidden]`
//! matrix, so a decode step runs one matrix-vector product for each.

use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};

use super::config::LlamaConfig;
use super::gguf::Gguf;
use crate::{Context, DType, Error, Result, Tensor};

/// A file's tensors, looked up by their GGUF names and dequantised to f32.
pub(crate) trait TensorSource {
    /// Returns the tensor's data and row-major shape, or [`Error::MissingTensor`].
    fn load(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)>;
    fn contains(&self, name: &str) -> bool;
    /// Format name for errors.
    fn format(&self) -> &'static str;
}

impl TensorSource for Gguf<'_> {
    fn load(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        self.dequantize(name)
    }

    fn contains(&self, name: &str) -> bool {
        self.tensor_info(name).is_some()
    }

    fn format(&self) -> &'static str {
        "GGUF"
    }
}

/// Hugging Face name of the LM head, the output projection to vocabulary logits.
const LM_HEAD: &str = "lm_head.weight";

/// A Hugging Face `model.safetensors` file, with names mapped to GGUF names and the Q
/// and K rows permuted into the layout llama.cpp uses for RoPE on adjacent pairs.
pub(crate) struct HfSafetensors<'a> {
    pub tensors: SafeTensors<'a>,
    pub heads: usize,
    pub kv_heads: usize,
}

impl HfSafetensors<'_> {
    /// Parses the header of a safetensors file held in `bytes`.
    ///
    /// Unless `tie_word_embeddings` is set, a file without `lm_head.weight` fails with
    /// [`Error::MissingTensor`] before any tensor is uploaded.
    pub fn parse<'b>(
        bytes: &'b [u8],
        config: &LlamaConfig,
        tie_word_embeddings: bool,
    ) -> Result<HfSafetensors<'b>> {
        let tensors = SafeTensors::deserialize(bytes).map_err(|e| Error::Format {
            format: "safetensors",
            field: "header".into(),
            detail: e.to_string(),
        })?;
        if !tie_word_embeddings && tensors.tensor(LM_HEAD).is_err() {
            log::warn!(
                "model.safetensors has no {LM_HEAD}, and config.json does not set \
                 tie_word_embeddings to true (absent means false for Llama models): add the \
                 tensor, or set tie_word_embeddings to true if the LM head is the embedding"
            );
            return Err(Error::MissingTensor(LM_HEAD.into()));
        }
        // NOTE: with tie_word_embeddings set, an lm_head.weight in the file is still used
        // as the LM head (see `load`). Whether transformers keeps that tensor or the
        // embedding in this case is not checked.
        Ok(HfSafetensors {
            tensors,
            heads: config.heads,
            kv_heads: config.kv_heads,
        })
    }

    fn hf_name(name: &str) -> String {
        if let Some(rest) = name.strip_prefix("blk.") {
            if let Some((layer, part)) = rest.split_once('.') {
                let part = match part {
                    "attn_norm.weight" => "input_layernorm.weight",
                    "ffn_norm.weight" => "post_attention_layernorm.weight",
                    "attn_q.weight" => "self_attn.q_proj.weight",
                    "attn_k.weight" => "self_attn.k_proj.weight",
                    "attn_v.weight" => "self_attn.v_proj.weight",
                    "attn_output.weight" => "self_attn.o_proj.weight",
                    "ffn_gate.weight" => "mlp.gate_proj.weight",
                    "ffn_up.weight" => "mlp.up_proj.weight",
                    "ffn_down.weight" => "mlp.down_proj.weight",
                    other => other,
                };
                return format!("model.layers.{layer}.{part}");
            }
        }
        match name {
            "token_embd.weight" => "model.embed_tokens.weight".into(),
            "output_norm.weight" => "model.norm.weight".into(),
            "output.weight" => LM_HEAD.into(),
            other => other.into(),
        }
    }
}

/// Reorders the rows of a `[heads * d, cols]` projection from the rotate-half layout of
/// Hugging Face checkpoints to adjacent pairs: within each head, row `i` and row
/// `i + d/2` become rows `2i` and `2i + 1`.
fn permute_for_rope(data: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let rows = data.len() / cols;
    let d = rows / heads.max(1);
    let half = d / 2;
    let mut out = vec![0.0; data.len()];
    for h in 0..heads {
        for i in 0..half {
            for (slot, src_row) in [(2 * i, i), (2 * i + 1, half + i)] {
                let src = (h * d + src_row) * cols;
                let dst = (h * d + slot) * cols;
                out[dst..dst + cols].copy_from_slice(&data[src..src + cols]);
            }
        }
    }
    out
}

impl TensorSource for HfSafetensors<'_> {
    fn load(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let hf_name = Self::hf_name(name);
        let view = self
            .tensors
            .tensor(&hf_name)
            .map_err(|_| Error::MissingTensor(hf_name.clone()))?;
        let bytes = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(Error::UnsupportedTensorType {
                    tensor: hf_name,
                    kind: format!("{other:?}"),
                })
            }
        };
        let shape = view.shape().to_vec();
        let cols = shape.last().copied().unwrap_or(1).max(1);
        let data = if name.ends_with("attn_q.weight") {
            permute_for_rope(&data, self.heads, cols)
        } else if name.ends_with("attn_k.weight") {
            permute_for_rope(&data, self.kv_heads, cols)
        } else {
            data
        };
        Ok((data, shape))
    }

    fn contains(&self, name: &str) -> bool {
        self.tensors.tensor(&Self::hf_name(name)).is_ok()
    }

    fn format(&self) -> &'static str {
        "safetensors"
    }
}

/// One decoder layer's weights.
pub(crate) struct LayerWeights {
    pub attn_norm: Tensor,
    /// `[q + 2 kv, hidden]`: Q rows, then K rows, then V rows.
    pub qkv: Tensor,
    /// `[hidden, heads * head_dim]`.
    pub output: Tensor,
    pub ffn_norm: Tensor,
    /// `[2 ffn, hidden]`: gate rows, then up rows.
    pub gate_up: Tensor,
    /// `[hidden, ffn]`.
    pub down: Tensor,
}

/// All of a model's weights on the GPU.
pub(crate) struct Weights {
    /// `[vocab, hidden]`, also the LM head when the model ties them.
    pub embedding: Tensor,
    pub layers: Vec<LayerWeights>,
    pub final_norm: Tensor,
    /// `[vocab, hidden]`, or `None` when tied to the embedding.
    pub lm_head: Option<Tensor>,
}

struct Loader<'a> {
    ctx: &'a Context,
    source: &'a dyn TensorSource,
    dtype: DType,
    progress: &'a mut dyn FnMut(usize, usize),
    done: usize,
    total: usize,
}

impl Loader<'_> {
    /// Loads `name` and checks that its shape is `expected`.
    fn load_checked(&mut self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let (data, shape) = self.source.load(name)?;
        if shape != expected {
            return Err(Error::Format {
                format: self.source.format(),
                field: name.to_string(),
                detail: format!(
                    "shape {shape:?} disagrees with the model metadata, which implies {expected:?}"
                ),
            });
        }
        Ok(data)
    }

    /// Loads tensors with the given shapes, concatenates their rows and uploads them.
    fn upload(&mut self, parts: &[(&str, [usize; 2])], dtype: DType) -> Result<Tensor> {
        let cols = parts[0].1[1];
        let mut rows = 0;
        let mut data = Vec::new();
        for (name, shape) in parts {
            let part = self.load_checked(name, shape)?;
            rows += shape[0];
            if data.is_empty() {
                data = part;
            } else {
                data.extend_from_slice(&part);
            }
        }
        let tensor = Tensor::from_f32(self.ctx, &data, &[rows, cols], dtype)?;
        self.done += parts.len();
        (self.progress)(self.done, self.total);
        Ok(tensor)
    }

    fn norm(&mut self, name: &str, width: usize) -> Result<Tensor> {
        let data = self.load_checked(name, &[width])?;
        let tensor = Tensor::from_f32(self.ctx, &data, &[width], DType::F32)?;
        self.done += 1;
        (self.progress)(self.done, self.total);
        Ok(tensor)
    }
}

/// Loads and uploads every weight of a Llama-family model, calling `progress(done,
/// total)` after each tensor.
pub(crate) fn load(
    ctx: &Context,
    config: &LlamaConfig,
    source: &dyn TensorSource,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Weights> {
    let dtype = if ctx.capabilities().shader_f16 {
        DType::F16
    } else {
        DType::F32
    };
    let tied = !source.contains("output.weight");
    let total = 2 + 9 * config.layers + usize::from(!tied);
    let mut loader = Loader {
        ctx,
        source,
        dtype,
        progress,
        done: 0,
        total,
    };
    let (hidden, ffn, vocab) = (config.hidden, config.ffn, config.vocab);
    let q_rows = config.heads * config.head_dim;
    let kv_rows = config.kv_heads * config.head_dim;

    let embedding = loader.upload(&[("token_embd.weight", [vocab, hidden])], dtype)?;
    let mut layers = Vec::with_capacity(config.layers);
    for i in 0..config.layers {
        let name = |part: &str| format!("blk.{i}.{part}.weight");
        let attn_norm = loader.norm(&name("attn_norm"), hidden)?;
        let qkv = loader.upload(
            &[
                (&name("attn_q"), [q_rows, hidden]),
                (&name("attn_k"), [kv_rows, hidden]),
                (&name("attn_v"), [kv_rows, hidden]),
            ],
            loader.dtype,
        )?;
        let output = loader.upload(&[(&name("attn_output"), [hidden, q_rows])], dtype)?;
        let ffn_norm = loader.norm(&name("ffn_norm"), hidden)?;
        let gate_up = loader.upload(
            &[
                (&name("ffn_gate"), [ffn, hidden]),
                (&name("ffn_up"), [ffn, hidden]),
            ],
            dtype,
        )?;
        let down = loader.upload(&[(&name("ffn_down"), [hidden, ffn])], dtype)?;
        layers.push(LayerWeights {
            attn_norm,
            qkv,
            output,
            ffn_norm,
            gate_up,
            down,
        });
    }
    let final_norm = loader.norm("output_norm.weight", hidden)?;
    let lm_head = if tied {
        None
    } else {
        Some(loader.upload(&[("output.weight", [vocab, hidden])], dtype)?)
    };
    Ok(Weights {
        embedding,
        layers,
        final_norm,
        lm_head,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use safetensors::tensor::TensorView;

    use super::*;

    fn tiny_config() -> LlamaConfig {
        LlamaConfig::from_hf_json(
            br#"{"num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
            "hidden_size": 8, "intermediate_size": 8, "vocab_size": 4}"#,
        )
        .unwrap()
    }

    /// Returns a safetensors file with a `[4, 8]` f32 tensor under each name.
    fn safetensors_with(names: &[&str]) -> Vec<u8> {
        let data: Vec<u8> = (0..32).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let views: Vec<(&str, TensorView<'_>)> = names
            .iter()
            .map(|&name| {
                (
                    name,
                    TensorView::new(Dtype::F32, vec![4, 8], &data).unwrap(),
                )
            })
            .collect();
        safetensors::tensor::serialize(views, None::<HashMap<String, String>>).unwrap()
    }

    #[test]
    fn untied_head_requires_lm_head() {
        let config = tiny_config();
        let without_head = safetensors_with(&["model.embed_tokens.weight"]);
        match HfSafetensors::parse(&without_head, &config, false) {
            Err(Error::MissingTensor(name)) => assert_eq!(name, "lm_head.weight"),
            Err(other) => panic!("expected MissingTensor, found {other:?}"),
            Ok(_) => panic!("an untied model without lm_head.weight was accepted"),
        }

        let tied = HfSafetensors::parse(&without_head, &config, true).unwrap();
        assert!(
            !tied.contains("output.weight"),
            "the head ties to the embedding"
        );
        assert!(tied.contains("token_embd.weight"));

        let with_head = safetensors_with(&["model.embed_tokens.weight", "lm_head.weight"]);
        for tie in [false, true] {
            let source = HfSafetensors::parse(&with_head, &config, tie).unwrap();
            assert!(
                source.contains("output.weight"),
                "tie_word_embeddings {tie}"
            );
            let (data, shape) = source.load("output.weight").unwrap();
            assert_eq!(shape, [4, 8]);
            assert_eq!(data[31], 31.0);
        }
    }

    #[test]
    fn corrupt_header_is_format_error_first() {
        let config = tiny_config();
        // The header claims 255 bytes where the file has 2, so parsing fails before the
        // check for lm_head.weight, whatever the value of tie_word_embeddings.
        for tie in [false, true] {
            match HfSafetensors::parse(b"\xff\0\0\0\0\0\0\0{}", &config, tie) {
                Err(Error::Format { format, .. }) => assert_eq!(format, "safetensors"),
                Err(other) => panic!("expected a safetensors format error, found {other:?}"),
                Ok(_) => panic!("a header longer than the file was accepted"),
            }
        }
    }
}
