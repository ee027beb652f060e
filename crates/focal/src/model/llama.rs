//! The Llama-family forward pass on engine kernels: embedding, RMSNorm, fused QKV
//! projection, RoPE with the cache write, causal GQA attention over the cache, output
//! projection, SwiGLU MLP, final norm and LM head, recorded into one command encoder.

use bytemuck::{Pod, Zeroable};
use wgpu::util::DeviceExt;

use super::sequence::Sequence;
use super::Model;
use crate::kernels::{rmsnorm_into, to_u32};
use crate::shader::{dispatch, grid_2d, Variant};
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

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct AttentionParams {
    pub tokens: u32,
    pub start: u32,
    pub heads: u32,
    pub kv_heads: u32,
    pub scale: f32,
    pub head: u32,
    pub row_len: u32,
    pub out_offset: u32,
}

/// Chooses the attention workgroup width: up to 32 invocations, fewer when the per-lane
/// output rows (`head_dim` f32 each) would exceed the granted workgroup memory.
pub(crate) fn attention_workgroup(limits: &wgpu::Limits, head_dim: usize) -> u32 {
    let per_lane = (head_dim as u32 + 2) * 4;
    let fit = limits.max_compute_workgroup_storage_size / per_lane;
    let wg = fit
        .min(32)
        .min(limits.max_compute_invocations_per_workgroup)
        .max(1);
    1 << (31 - wg.leading_zeros())
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

    pub(crate) fn attention_variant(&self) -> Variant {
        let wg = attention_workgroup(self.inner.ctx.limits(), self.inner.config.head_dim);
        Variant::new(DType::F32)
            .define_u32("WG", wg)
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
    /// Checks the tokens and grows the cache first; `seq`'s token list is extended only
    /// after everything is recorded, so an error leaves it unchanged.
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
        seq.reserve(ctx, c, start + t)?;

        let scratch = Scratch {
            hidden: Tensor::zeros(ctx, &[t, c.hidden], DType::F32)?,
            normed: Tensor::zeros(ctx, &[t, c.hidden], DType::F32)?,
            qkv: f32_buffer(ctx, "qkv activations", t * c.qkv_width())?,
            attn: f32_buffer(ctx, "attention output", t * c.heads * c.head_dim)?,
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
        let attention_pipeline =
            ctx.pipeline("cached_attention.wgsl", "attend", &self.attention_variant())?;
        let attention = AttentionParams {
            tokens: rope.tokens,
            start: rope.start,
            heads: c.heads as u32,
            kv_heads: c.kv_heads as u32,
            scale: 1.0 / (c.head_dim as f32).sqrt(),
            head: 0,
            row_len: 0,
            out_offset: 0,
        };
        for (layer, cache) in w.layers.iter().zip(&seq.layers) {
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
                    (5, &cache.q),
                    (6, &cache.k),
                    (7, &cache.v),
                ],
                t * (c.heads + 2 * c.kv_heads) * c.head_dim / 2,
            )?;
            dispatch(
                ctx,
                encoder,
                "attend",
                &attention_pipeline,
                Some(bytemuck::bytes_of(&attention)),
                &[
                    (1, &cache.q),
                    (2, &cache.k),
                    (3, &cache.v),
                    (4, &scratch.attn),
                    (5, &cache.lse),
                ],
                grid_2d(ctx, to_u32("attention rows", t * c.heads)?),
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
            submit_and_read(ctx, encoder, &logits, self.inner.config.vocab as u64 * 4).await?;
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
        let bytes = submit_and_read(ctx, encoder, &best, 4).await?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// Blocking form of [`Model::forward`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward_blocking(&self, seq: &mut Sequence, tokens: &[u32]) -> Result<Vec<f32>> {
        pollster::block_on(self.forward(seq, tokens))
    }
}

/// Appends a copy of `size` bytes of `buffer` to `encoder`, submits it and returns the
/// bytes once the GPU is done.
pub(crate) async fn submit_and_read(
    ctx: &Context,
    mut encoder: wgpu::CommandEncoder,
    buffer: &wgpu::Buffer,
    size: u64,
) -> Result<Vec<u8>> {
    let padded = size.div_ceil(4).max(1) * 4;
    let staging = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("model readback"),
        size: padded,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, padded);
    ctx.submit(encoder);
    let (sender, receiver) = futures_channel::oneshot::channel();
    staging
        .slice(..)
        .map_async(wgpu::MapMode::Read, move |result| {
            let _ = sender.send(result);
        });
    ctx.wait_idle()?;
    receiver
        .await
        .map_err(|_| Error::Readback("the map callback was dropped".into()))?
        .map_err(|e| Error::Readback(e.to_string()))?;
    let bytes = {
        let view = staging
            .get_mapped_range(..)
            .map_err(|e| Error::Readback(e.to_string()))?;
        view[..size as usize].to_vec()
    };
    staging.unmap();
    Ok(bytes)
}
