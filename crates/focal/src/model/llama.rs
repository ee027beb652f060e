//! The Llama-family forward pass on engine kernels, recorded into one command encoder:
//! embedding, RMSNorm, fused QKV projection, RoPE, the K/V write into the model's paged
//! KV cache, causal GQA attention, output projection, SwiGLU MLP, final norm and LM head.
//! A prompt on an empty sequence runs flash attention, and later tokens run paged
//! attention over the cache.

use bytemuck::{Pod, Zeroable};
use wgpu::util::DeviceExt;

use super::sequence::{lock, LayerCapture, Sequence};
use super::Model;
use crate::attention::{flash_attention_into, AttentionOptions, Mask};
use crate::kernels::{rmsnorm_into, to_u32};
use crate::shader::{dispatch, grid_2d, Variant};
use crate::tensor::submit_and_read;
use crate::{Context, DType, Error, Result, Tensor};

/// Invocations of the linear kernel; lanes split the input dimension.
const LINEAR_WG: u32 = 32;
/// Output rows per linear workgroup.
const LINEAR_ROWS: u32 = 4;
/// Invocations of the elementwise steps in llama.wgsl.
const STEP_WG: u32 = 64;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct LinearParams {
    n: u32,
    k4: u32,
    tokens: u32,
    x_offset: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct StepParams {
    tokens: u32,
    start: u32,
    heads: u32,
    kv_heads: u32,
    width: u32,
    rope_theta: f32,
    _pad: [u32; 2],
}

/// Records `y[t, n] = sum_k x[t, k] * w[n, k]` for `tokens` rows of `x` starting at
/// element `x_offset` (a multiple of 4), or `y += ...` when `accumulate`.
/// `w` is `[N, K]` (f16 or f32); `x` and `y` are f32 buffers.
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear_into(
    ctx: &Context,
    encoder: &mut wgpu::CommandEncoder,
    x: &wgpu::Buffer,
    x_offset: usize,
    tokens: usize,
    w: &Tensor,
    y: &wgpu::Buffer,
    accumulate: bool,
) -> Result<()> {
    let [n, k] = *w.shape() else {
        return Err(Error::ShapeMismatch {
            op: "linear",
            detail: format!("weight must be 2-D, found {:?}", w.shape()),
        });
    };
    if !k.is_multiple_of(4) || !x_offset.is_multiple_of(4) {
        return Err(Error::ShapeMismatch {
            op: "linear",
            detail: format!("K = {k} and x offset {x_offset} must be multiples of 4"),
        });
    }
    let tokens_per_group: u32 = match tokens {
        1 => 1,
        2 => 2,
        3 | 4 => 4,
        _ => 8,
    };
    let caps = ctx.capabilities();
    let subgroups =
        caps.subgroups && caps.subgroup_min_size >= 4 && caps.subgroup_max_size <= LINEAR_WG;
    let variant = Variant::new(w.dtype())
        .define_u32("WG", LINEAR_WG)
        .define_u32("ROWS", LINEAR_ROWS)
        .define_u32("TOKENS", tokens_per_group)
        .flag("ACCUMULATE", accumulate)
        .with_subgroups(subgroups);
    let pipeline = ctx.pipeline("linear.wgsl", "linear", &variant)?;
    let params = LinearParams {
        n: to_u32("N", n)?,
        k4: to_u32("K", k / 4)?,
        tokens: to_u32("tokens", tokens)?,
        x_offset: to_u32("x offset", x_offset / 4)?,
    };
    let mut groups = grid_2d(ctx, to_u32("N", n.div_ceil(LINEAR_ROWS as usize))?);
    groups[2] = to_u32("tokens", tokens.div_ceil(tokens_per_group as usize))?;
    dispatch(
        ctx,
        encoder,
        "linear",
        &pipeline,
        Some(bytemuck::bytes_of(&params)),
        &[(1, x), (2, w.buffer()), (3, y)],
        groups,
    )
}

/// Activations of one forward call of `tokens` tokens.
struct Scratch {
    hidden: Tensor,
    normed: Tensor,
    qkv: wgpu::Buffer,
    /// `[1, heads, tokens, head_dim]`, rotated.
    q: Tensor,
    /// `[1, kv_heads, tokens, head_dim]`, rotated.
    k: Tensor,
    /// `[1, kv_heads, tokens, head_dim]`.
    v: Tensor,
    /// Attention output per head, `[1, heads, tokens, head_dim]`.
    attn_heads: Tensor,
    /// `[1, heads, tokens]`: log sum exp of the scaled scores of each row.
    lse: Tensor,
    /// Attention output with the heads merged, `[tokens, heads * head_dim]`.
    attn: wgpu::Buffer,
    gate_up: wgpu::Buffer,
    gated: wgpu::Buffer,
}

fn f32_buffer(ctx: &Context, what: &str, elements: usize) -> Result<wgpu::Buffer> {
    let size = (elements as u64 * 4).max(4);
    ctx.check_binding_size(what, size)?;
    Ok(ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some(what),
        size,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    }))
}

impl Model {
    fn step_variant(&self) -> Variant {
        Variant::new(self.inner.weights.embedding.dtype())
            .define_u32("WG", STEP_WG)
            .define_u32("HEAD_DIM", self.inner.config.head_dim as u32)
    }

    fn step_params(&self, tokens: usize, start: usize, width: usize) -> Result<StepParams> {
        let c = &self.inner.config;
        Ok(StepParams {
            tokens: to_u32("tokens", tokens)?,
            start: to_u32("start", start)?,
            heads: c.heads as u32,
            kv_heads: c.kv_heads as u32,
            width: to_u32("width", width)?,
            rope_theta: c.rope_theta,
            _pad: [0; 2],
        })
    }

    fn run_step(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        entry: &'static str,
        params: &StepParams,
        buffers: &[(u32, &wgpu::Buffer)],
        invocations: usize,
    ) -> Result<()> {
        let ctx = &self.inner.ctx;
        let pipeline = ctx.pipeline("llama.wgsl", entry, &self.step_variant())?;
        let groups = to_u32(entry, invocations.div_ceil(STEP_WG as usize))?;
        dispatch(
            ctx,
            encoder,
            entry,
            &pipeline,
            Some(bytemuck::bytes_of(params)),
            buffers,
            grid_2d(ctx, groups),
        )
    }

    /// Records the forward pass of `tokens` appended to `seq` and returns the buffer
    /// that will hold the last token's logits (`[vocab]` f32) once submitted.
    ///
    /// Checks the tokens, grows the query store and reserves the KV cache rows first.
    /// `seq`'s token list is extended only after everything is recorded, so an error
    /// leaves it unchanged.
    pub(crate) fn record_forward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        seq: &mut Sequence,
        tokens: &[u32],
    ) -> Result<wgpu::Buffer> {
        let ctx = &self.inner.ctx;
        let c = &self.inner.config;
        let w = &self.inner.weights;
        if tokens.is_empty() {
            return Err(Error::Generation(
                "no tokens to run: the input is empty".into(),
            ));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.vocab) {
            crate::bail_arg!(
                "token",
                bad,
                "is outside the vocabulary of {} tokens",
                c.vocab
            );
        }
        let t = tokens.len();
        let start = seq.len();
        let (heads, kv_heads, d) = (c.heads, c.kv_heads, c.head_dim);
        seq.reserve(ctx, c, start + t)?;

        let scratch = Scratch {
            hidden: Tensor::zeros(ctx, &[t, c.hidden], DType::F32)?,
            normed: Tensor::zeros(ctx, &[t, c.hidden], DType::F32)?,
            qkv: f32_buffer(ctx, "qkv activations", t * c.qkv_width())?,
            q: Tensor::zeros(ctx, &[1, heads, t, d], DType::F32)?,
            k: Tensor::zeros(ctx, &[1, kv_heads, t, d], DType::F32)?,
            v: Tensor::zeros(ctx, &[1, kv_heads, t, d], DType::F32)?,
            attn_heads: Tensor::zeros(ctx, &[1, heads, t, d], DType::F32)?,
            lse: Tensor::zeros(ctx, &[1, heads, t], DType::F32)?,
            attn: f32_buffer(ctx, "attention output", t * heads * d)?,
            gate_up: f32_buffer(ctx, "gate and up activations", t * 2 * c.ffn)?,
            gated: f32_buffer(ctx, "MLP activations", t * c.ffn)?,
        };
        let logits = f32_buffer(ctx, "logits", c.vocab)?;
        let ids = ctx
            .device()
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("token ids"),
                contents: bytemuck::cast_slice(tokens),
                usage: wgpu::BufferUsages::STORAGE,
            });

        let embed = self.step_params(t, start, c.hidden)?;
        self.run_step(
            encoder,
            "embedding",
            &embed,
            &[
                (1, &ids),
                (2, w.embedding.buffer()),
                (3, scratch.hidden.buffer()),
            ],
            t * c.hidden,
        )?;

        let rope = self.step_params(t, start, 0)?;
        let glu = self.step_params(t, start, c.ffn)?;
        let mut kv = lock(&self.inner.kv)?;
        // NOTE: from here on the KV cache already counts the new rows, so an error in the
        // rest of this function leaves the cache one reservation ahead of `seq.tokens`.
        // The inputs are checked by then, so only pipeline or device-limit errors remain.
        kv.reserve(encoder, seq.id, t)?;
        // A prompt on an empty sequence attends only to its own keys, so it runs flash
        // attention over the scratch K/V; later tokens read the earlier rows from the
        // paged cache.
        let flash_options = AttentionOptions::with_mask(Mask::causal());
        let paged_options = kv.attention_options();
        for (index, (layer, store)) in w.layers.iter().zip(&seq.layers).enumerate() {
            let hidden = scratch.hidden.buffer();
            rmsnorm_into(
                ctx,
                encoder,
                &scratch.hidden,
                &layer.attn_norm,
                c.rms_eps,
                &scratch.normed,
            )?;
            linear_into(
                ctx,
                encoder,
                scratch.normed.buffer(),
                0,
                t,
                &layer.qkv,
                &scratch.qkv,
                false,
            )?;
            self.run_step(
                encoder,
                "rope_store",
                &rope,
                &[
                    (4, &scratch.qkv),
                    (5, scratch.q.buffer()),
                    (6, scratch.k.buffer()),
                    (7, scratch.v.buffer()),
                ],
                t * (heads + 2 * kv_heads) * d / 2,
            )?;
            kv.write_into(encoder, seq.id, index, &scratch.k, &scratch.v)?;
            if start == 0 {
                flash_attention_into(
                    ctx,
                    encoder,
                    &scratch.q,
                    &scratch.k,
                    &scratch.v,
                    &flash_options,
                    &scratch.attn_heads,
                    Some(&scratch.lse),
                )?;
            } else {
                kv.attention_into(
                    encoder,
                    seq.id,
                    index,
                    &scratch.q,
                    &paged_options,
                    &scratch.attn_heads,
                    &scratch.lse,
                )?;
            }
            store_rows(encoder, &scratch, store, seq.capacity, start, d);
            self.run_step(
                encoder,
                "merge_heads",
                &rope,
                &[(12, scratch.attn_heads.buffer()), (13, &scratch.attn)],
                t * heads * d,
            )?;
            linear_into(
                ctx,
                encoder,
                &scratch.attn,
                0,
                t,
                &layer.output,
                hidden,
                true,
            )?;

            rmsnorm_into(
                ctx,
                encoder,
                &scratch.hidden,
                &layer.ffn_norm,
                c.rms_eps,
                &scratch.normed,
            )?;
            linear_into(
                ctx,
                encoder,
                scratch.normed.buffer(),
                0,
                t,
                &layer.gate_up,
                &scratch.gate_up,
                false,
            )?;
            self.run_step(
                encoder,
                "swiglu",
                &glu,
                &[(8, &scratch.gate_up), (9, &scratch.gated)],
                t * c.ffn,
            )?;
            linear_into(
                ctx,
                encoder,
                &scratch.gated,
                0,
                t,
                &layer.down,
                hidden,
                true,
            )?;
        }

        rmsnorm_into(
            ctx,
            encoder,
            &scratch.hidden,
            &w.final_norm,
            c.rms_eps,
            &scratch.normed,
        )?;
        let head = w.lm_head.as_ref().unwrap_or(&w.embedding);
        linear_into(
            ctx,
            encoder,
            scratch.normed.buffer(),
            (t - 1) * c.hidden,
            1,
            head,
            &logits,
            false,
        )?;
        seq.tokens.extend_from_slice(tokens);
        Ok(logits)
    }

    /// Runs `tokens` through the model after the tokens already in `seq` and returns the
    /// last token's logits (`[vocab]`). One submit; the logits are the only readback.
    pub async fn forward(&self, seq: &mut Sequence, tokens: &[u32]) -> Result<Vec<f32>> {
        let ctx = &self.inner.ctx;
        let mut encoder = ctx.encoder();
        let logits = self.record_forward(&mut encoder, seq, tokens)?;
        let bytes =
            submit_and_read(ctx, encoder, &logits, 0, self.inner.config.vocab as u64 * 4).await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Like [`Model::forward`], but picks the most likely next token on the GPU and reads
    /// back only its id.
    pub async fn forward_greedy(&self, seq: &mut Sequence, tokens: &[u32]) -> Result<u32> {
        let ctx = &self.inner.ctx;
        let mut encoder = ctx.encoder();
        let logits = self.record_forward(&mut encoder, seq, tokens)?;
        let best = f32_buffer(ctx, "argmax", 1)?;
        let params = self.step_params(1, 0, self.inner.config.vocab)?;
        let pipeline = ctx.pipeline("llama.wgsl", "argmax", &self.step_variant())?;
        dispatch(
            ctx,
            &mut encoder,
            "argmax",
            &pipeline,
            Some(bytemuck::bytes_of(&params)),
            &[(10, &logits), (11, &best)],
            [1, 1, 1],
        )?;
        let bytes = submit_and_read(ctx, encoder, &best, 0, 4).await?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// Blocking form of [`Model::forward`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward_blocking(&self, seq: &mut Sequence, tokens: &[u32]) -> Result<Vec<f32>> {
        pollster::block_on(self.forward(seq, tokens))
    }
}

/// Records copies of the new rows' rotated queries and log-sum-exps from `scratch` into
/// `store`, which has room for `capacity` positions per head, at position `start`.
fn store_rows(
    encoder: &mut wgpu::CommandEncoder,
    scratch: &Scratch,
    store: &LayerCapture,
    capacity: usize,
    start: usize,
    head_dim: usize,
) {
    let [_, heads, tokens, _] = *scratch.q.shape() else {
        unreachable!("the query scratch is 4-D");
    };
    for (from, to, row_bytes) in [
        (scratch.q.buffer(), &store.q, head_dim as u64 * 4),
        (scratch.lse.buffer(), &store.lse, 4),
    ] {
        for head in 0..heads as u64 {
            encoder.copy_buffer_to_buffer(
                from,
                head * tokens as u64 * row_bytes,
                to,
                (head * capacity as u64 + start as u64) * row_bytes,
                tokens as u64 * row_bytes,
            );
        }
    }
}
