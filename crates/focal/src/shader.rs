//! WGSL sources, the variant preprocessor, validation with naga and the pipeline cache.
//!
//! Every kernel file in `shaders/` is plain WGSL plus a few line directives:
//! `#if NAME`, `#ifdef NAME`, `#ifndef NAME`, `#else`, `#endif` and
//! `#default NAME VALUE`, which gives a constant's value when the variant sets none.
//! A [`Variant`] supplies the element type and named constants. The preprocessor prepends
//! `enable f16;` (for f16), `alias elem = f16|f32;` and one `const NAME = value;` per
//! constant, and blanks directive lines so that line numbers in errors still point
//! into the original file.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::tensor::DType;
use crate::{Context, Error, Result};

/// Every WGSL file shipped with the engine, by file name.
pub const SHADER_FILES: &[(&str, &str)] = &[
    (
        "paged_attention.wgsl",
        include_str!("../../../shaders/paged_attention.wgsl"),
    ),
    (
        "paged_write.wgsl",
        include_str!("../../../shaders/paged_write.wgsl"),
    ),
    ("matmul.wgsl", include_str!("../../../shaders/matmul.wgsl")),
    (
        "softmax.wgsl",
        include_str!("../../../shaders/softmax.wgsl"),
    ),
    (
        "rmsnorm.wgsl",
        include_str!("../../../shaders/rmsnorm.wgsl"),
    ),
    (
        "elementwise.wgsl",
        include_str!("../../../shaders/elementwise.wgsl"),
    ),
    (
        "attention_flash.wgsl",
        include_str!("../../../shaders/attention_flash.wgsl"),
    ),
    (
        "attention_decode.wgsl",
        include_str!("../../../shaders/attention_decode.wgsl"),
    ),
    (
        "attention_naive.wgsl",
        include_str!("../../../shaders/attention_naive.wgsl"),
    ),
    (
        "attention_probs.wgsl",
        include_str!("../../../shaders/attention_probs.wgsl"),
    ),
    ("linear.wgsl", include_str!("../../../shaders/linear.wgsl")),
    ("llama.wgsl", include_str!("../../../shaders/llama.wgsl")),
];

/// Returns the source of a shipped shader file.
pub fn shader_source(file: &str) -> Result<&'static str> {
    SHADER_FILES
        .iter()
        .find(|(name, _)| *name == file)
        .map(|(_, source)| *source)
        .ok_or_else(|| Error::Preprocess {
            file: file.to_string(),
            line: 0,
            message: "no shipped shader has this name".into(),
        })
}

/// One compiled form of a shader file: element type, subgroup use and named constants.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Variant {
    pub dtype: DType,
    pub subgroups: bool,
    /// Constants as (name, WGSL literal). `#if NAME`, `#ifdef NAME` and `#ifndef NAME`
    /// all test the value: `false`, `0` or an unset name is false. `SUBGROUPS` and `F16`
    /// are set from the fields above.
    pub defines: Vec<(String, String)>,
}

impl Variant {
    pub fn new(dtype: DType) -> Self {
        Self {
            dtype,
            subgroups: false,
            defines: Vec::new(),
        }
    }

    /// Adds a named constant, written as a WGSL literal (`64u`, `true`, `1e-5`).
    pub fn define(mut self, name: &str, value: impl ToString) -> Self {
        self.defines.push((name.to_string(), value.to_string()));
        self
    }

    /// Adds a named `u32` constant.
    pub fn define_u32(self, name: &str, value: u32) -> Self {
        self.define(name, format!("{value}u"))
    }

    /// Adds a flag that `#if` tests.
    pub fn flag(self, name: &str, on: bool) -> Self {
        self.define(name, on)
    }

    pub fn with_subgroups(mut self, on: bool) -> Self {
        self.subgroups = on;
        self
    }

    /// Returns this variant's constants followed by the file's defaults it does not set.
    fn with_defaults(&self, defaults: &[(String, String)]) -> Vec<(String, String)> {
        let mut all = self.defines.clone();
        for (name, value) in defaults {
            if !all.iter().any(|(n, _)| n == name) {
                all.push((name.clone(), value.clone()));
            }
        }
        all.push(("SUBGROUPS".into(), self.subgroups.to_string()));
        all.push(("F16".into(), (self.dtype == DType::F16).to_string()));
        all
    }
}

fn is_true(defines: &[(String, String)], name: &str) -> bool {
    defines
        .iter()
        .find(|(n, _)| n == name)
        .is_some_and(|(_, v)| !matches!(v.as_str(), "false" | "0" | "0u"))
}

/// WGSL text produced by [`preprocess`], with the number of header lines it prepended.
#[derive(Debug)]
pub struct Preprocessed {
    pub source: String,
    pub header_lines: usize,
}

/// Expands the directives of `source` for `variant`.
pub fn preprocess(file: &str, source: &str, variant: &Variant) -> Result<Preprocessed> {
    let mut defaults = Vec::new();
    for (index, line) in source.lines().enumerate() {
        if let Some(rest) = line.trim_start().strip_prefix("#default") {
            let mut words = rest.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some(name), Some(value), None) => {
                    defaults.push((name.to_string(), value.to_string()))
                }
                _ => {
                    return Err(Error::Preprocess {
                        file: file.into(),
                        line: index + 1,
                        message: format!("expected `#default NAME VALUE`, found {line:?}"),
                    })
                }
            }
        }
    }
    let defines = variant.with_defaults(&defaults);

    let mut header = String::new();
    if variant.dtype == DType::F16 {
        header.push_str("enable f16;\n");
    }
    header.push_str(&format!("alias elem = {};\n", variant.dtype.wgsl()));
    header.push_str(&format!("alias elem4 = vec4<{}>;\n", variant.dtype.wgsl()));
    for (name, value) in &defines {
        if value != "true" && value != "false" {
            header.push_str(&format!("const {name} = {value};\n"));
        }
    }
    let header_lines = header.lines().count();

    // Each stack entry: (this branch emits, the enclosing branch emits, an #else was seen).
    let mut stack: Vec<(bool, bool, bool)> = Vec::new();
    let mut out = header;
    for (index, line) in source.lines().enumerate() {
        let trimmed = line.trim_start();
        let emitting = stack.last().is_none_or(|s| s.0);
        let error = |message: String| Error::Preprocess {
            file: file.into(),
            line: index + 1,
            message,
        };
        if let Some(rest) = trimmed.strip_prefix('#') {
            let mut words = rest.split_whitespace();
            let directive = words.next().unwrap_or("");
            let name = words.next();
            match (directive, name) {
                ("if", Some(n)) => stack.push((emitting && is_true(&defines, n), emitting, false)),
                ("ifdef", Some(n)) => {
                    stack.push((emitting && is_true(&defines, n), emitting, false))
                }
                ("ifndef", Some(n)) => {
                    stack.push((emitting && !is_true(&defines, n), emitting, false))
                }
                ("default", Some(_)) => {}
                ("else", None) => match stack.last_mut() {
                    Some(top) if !top.2 => {
                        *top = (top.1 && !top.0, top.1, true);
                    }
                    _ => return Err(error("#else without a matching #if".into())),
                },
                ("endif", None) => {
                    if stack.pop().is_none() {
                        return Err(error("#endif without a matching #if".into()));
                    }
                }
                _ => return Err(error(format!("unknown or malformed directive {trimmed:?}"))),
            }
            out.push('\n');
            continue;
        }
        if emitting {
            out.push_str(line);
        }
        out.push('\n');
    }
    if !stack.is_empty() {
        return Err(Error::Preprocess {
            file: file.into(),
            line: source.lines().count(),
            message: format!("{} #if block(s) not closed with #endif", stack.len()),
        });
    }
    Ok(Preprocessed {
        source: out,
        header_lines,
    })
}

/// Parses and validates preprocessed WGSL with naga, mapping errors to the original file's
/// line numbers.
pub fn validate(file: &str, pre: &Preprocessed, variant: &Variant) -> Result<naga::Module> {
    let located = |message: String, location: Option<naga::SourceLocation>| {
        let (line, column) = location.map_or((0, 0), |l| (l.line_number, l.line_position));
        Error::Shader {
            file: file.to_string(),
            line: line.saturating_sub(pre.header_lines as u32),
            column,
            message,
        }
    };
    let module = naga::front::wgsl::parse_str(&pre.source)
        .map_err(|e| located(e.emit_to_string(&pre.source), e.location(&pre.source)))?;
    let mut caps = naga::valid::Capabilities::empty();
    if variant.dtype == DType::F16 {
        caps |= naga::valid::Capabilities::SHADER_FLOAT16;
    }
    if variant.subgroups {
        caps |= naga::valid::Capabilities::SUBGROUP;
    }
    let mut validator = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps);
    if variant.subgroups {
        validator.subgroup_stages(naga::valid::ShaderStages::COMPUTE);
        validator.subgroup_operations(naga::valid::SubgroupOperationSet::all());
    }
    validator.validate(&module).map_err(|e| {
        let location = e.location(&pre.source);
        located(e.emit_to_string(&pre.source), location)
    })?;
    Ok(module)
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct PipelineKey {
    file: &'static str,
    entry: &'static str,
    variant: Variant,
}

/// Compiled compute pipelines, keyed by shader file, entry point and variant.
#[derive(Default)]
pub struct PipelineCache {
    pipelines: Mutex<HashMap<PipelineKey, Arc<wgpu::ComputePipeline>>>,
}

impl PipelineCache {
    pub fn len(&self) -> usize {
        self.pipelines.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Context {
    /// Returns the pipeline for `entry` of `file` in `variant`, compiling it on first use.
    ///
    /// Errors when the adapter lacks f16 or subgroups that the variant needs, and with
    /// file, line and message when the WGSL fails to parse or validate.
    pub fn pipeline(
        &self,
        file: &'static str,
        entry: &'static str,
        variant: &Variant,
    ) -> Result<Arc<wgpu::ComputePipeline>> {
        let key = PipelineKey {
            file,
            entry,
            variant: variant.clone(),
        };
        if let Some(found) = self
            .pipelines()
            .pipelines
            .lock()
            .expect("pipeline cache")
            .get(&key)
        {
            return Ok(found.clone());
        }
        if variant.dtype == DType::F16 && !self.capabilities().shader_f16 {
            return Err(Error::UnsupportedDType { dtype: DType::F16 });
        }
        if variant.subgroups && !self.capabilities().subgroups {
            return Err(Error::InvalidArgument {
                name: "variant.subgroups",
                value: "true".into(),
                reason: "the adapter has no SUBGROUP feature".into(),
            });
        }
        let pre = preprocess(file, shader_source(file)?, variant)?;
        validate(file, &pre, variant)?;
        log::debug!("compiling {file}::{entry} for {variant:?}");
        let module = self
            .device()
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(file),
                source: wgpu::ShaderSource::Wgsl(pre.source.into()),
            });
        let pipeline = self
            .device()
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            });
        let pipeline = Arc::new(pipeline);
        self.pipelines()
            .pipelines
            .lock()
            .expect("pipeline cache")
            .insert(key, pipeline.clone());
        Ok(pipeline)
    }

    /// Number of compiled pipelines in the cache.
    pub fn pipeline_count(&self) -> usize {
        self.pipelines().len()
    }

    /// Creates a command encoder for recording kernels.
    pub fn encoder(&self) -> wgpu::CommandEncoder {
        self.device()
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("focal"),
            })
    }

    /// Submits recorded kernels to the queue.
    pub fn submit(&self, encoder: wgpu::CommandEncoder) {
        self.queue().submit([encoder.finish()]);
    }
}

/// Records one dispatch of `pipeline`. `params`, when given, binds as a uniform at
/// binding 0; `buffers` pairs each storage buffer with its binding number.
pub(crate) fn dispatch(
    ctx: &Context,
    encoder: &mut wgpu::CommandEncoder,
    kernel: &'static str,
    pipeline: &wgpu::ComputePipeline,
    params: Option<&[u8]>,
    buffers: &[(u32, &wgpu::Buffer)],
    workgroups: [u32; 3],
) -> Result<()> {
    let limit = ctx.limits().max_compute_workgroups_per_dimension;
    for &count in &workgroups {
        if count > limit {
            return Err(Error::DispatchTooLarge {
                kernel,
                count: count as u64,
                limit,
            });
        }
    }
    if workgroups.contains(&0) {
        return Ok(());
    }
    let uniform = params.map(|bytes| {
        use wgpu::util::DeviceExt;
        ctx.device()
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("focal params"),
                contents: bytes,
                usage: wgpu::BufferUsages::UNIFORM,
            })
    });
    let mut entries = Vec::with_capacity(buffers.len() + 1);
    if let Some(uniform) = &uniform {
        entries.push(wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
        });
    }
    for &(binding, buffer) in buffers {
        entries.push(wgpu::BindGroupEntry {
            binding,
            resource: buffer.as_entire_binding(),
        });
    }
    let bind_group = ctx.device().create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(kernel),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &entries,
    });
    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some(kernel),
        timestamp_writes: None,
    });
    pass.set_pipeline(pipeline);
    pass.set_bind_group(0, &bind_group, &[]);
    pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
    Ok(())
}

/// Splits `count` workgroups over x and y so that neither exceeds the device limit.
pub(crate) fn grid_2d(ctx: &Context, count: u32) -> [u32; 3] {
    let limit = ctx.limits().max_compute_workgroups_per_dimension.max(1);
    if count <= limit {
        [count, 1, 1]
    } else {
        [limit, count.div_ceil(limit), 1]
    }
}
