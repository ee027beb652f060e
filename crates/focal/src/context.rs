//! GPU context: instance, adapter, device and queue, plus the capabilities that
//! kernels use to pick their variants.

use std::sync::{Arc, Mutex};

use crate::shader::PipelineCache;
use crate::{Error, Result};

/// Adapter capabilities that select kernel variants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// `SHADER_F16` is enabled: f16 storage and arithmetic in WGSL.
    pub shader_f16: bool,
    /// `SUBGROUP` is enabled: subgroup reductions in WGSL.
    pub subgroups: bool,
    /// `TIMESTAMP_QUERY` is enabled: GPU-side timing for benchmarks.
    pub timestamps: bool,
    /// Smallest subgroup size the adapter reports (0 when unknown).
    pub subgroup_min_size: u32,
    /// Largest subgroup size the adapter reports (0 when unknown).
    pub subgroup_max_size: u32,
    /// Whether the decode and paged attention kernels default to their subgroup
    /// variants, as [`ContextOptions::subgroup_attention`] chose.
    pub subgroup_attention: bool,
}

/// Optional features to request when creating a [`Context`].
#[derive(Clone, Debug)]
pub struct ContextOptions {
    /// Request `SHADER_F16` when the adapter has it.
    pub shader_f16: bool,
    /// Request `SUBGROUP` when the adapter has it.
    pub subgroups: bool,
    /// Request `TIMESTAMP_QUERY` when the adapter has it.
    pub timestamps: bool,
    /// Run the decode and paged attention kernels in their subgroup variants. `None`
    /// chooses them where subgroups are granted and the adapter is not a CPU: on
    /// lavapipe the plain variants measured faster (see BENCHMARKS.md), while GPUs
    /// usually gain from subgroup reductions.
    pub subgroup_attention: Option<bool>,
    /// Prefer a discrete GPU over an integrated or software one.
    pub power_preference: wgpu::PowerPreference,
}

impl Default for ContextOptions {
    fn default() -> Self {
        Self {
            shader_f16: true,
            subgroups: true,
            timestamps: true,
            subgroup_attention: None,
            power_preference: wgpu::PowerPreference::HighPerformance,
        }
    }
}

/// An open GPU device with its queue, granted limits and pipeline cache.
///
/// Cloning is cheap: clones share the device and the cache.
#[derive(Clone)]
pub struct Context {
    pub(crate) inner: Arc<ContextInner>,
}

pub(crate) struct ContextInner {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub adapter_info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub capabilities: Capabilities,
    pub pipelines: PipelineCache,
    /// The first validation or out-of-memory error the device raised outside any error
    /// scope since it was last taken; see [`Context::take_device_error`].
    pub device_error: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("adapter", &self.inner.adapter_info.name)
            .field("backend", &self.inner.adapter_info.backend)
            .field("capabilities", &self.inner.capabilities)
            .finish()
    }
}

impl Context {
    /// Opens the best adapter with the default options.
    pub async fn new() -> Result<Self> {
        Self::with_options(&ContextOptions::default()).await
    }

    /// Opens the best adapter, requesting the optional features in `options` that it has
    /// and the adapter's own buffer, binding and workgroup limits.
    pub async fn with_options(options: &ContextOptions) -> Result<Self> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: options.power_preference,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::NoAdapter(e.to_string()))?;
        Self::from_adapter(&adapter, options).await
    }

    /// Opens a device on an adapter the caller already chose.
    pub async fn from_adapter(adapter: &wgpu::Adapter, options: &ContextOptions) -> Result<Self> {
        let adapter_info = adapter.get_info();
        let available = adapter.features();
        let mut requested = wgpu::Features::empty();
        if options.shader_f16 {
            requested |= wgpu::Features::SHADER_F16;
        }
        if options.subgroups {
            requested |= wgpu::Features::SUBGROUP;
        }
        if options.timestamps {
            requested |= wgpu::Features::TIMESTAMP_QUERY;
        }
        let required_features = requested & available;

        // Ask for everything the adapter offers: the WebGPU defaults (128 MiB bindings,
        // 16 KiB workgroup memory) are far below what most adapters grant.
        let required_limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("focal"),
                required_features,
                required_limits,
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::RequestDevice {
                adapter: adapter_info.name.clone(),
                message: e.to_string(),
            })?;
        let device_error = Arc::new(Mutex::new(None::<String>));
        let first_error = Arc::clone(&device_error);
        device.on_uncaptured_error(Arc::new(move |error| {
            log::error!("uncaptured wgpu error: {error}");
            let mut slot = first_error.lock().unwrap_or_else(|e| e.into_inner());
            slot.get_or_insert_with(|| error.to_string());
        }));

        let features = device.features();
        let subgroups = features.contains(wgpu::Features::SUBGROUP);
        let cpu = adapter_info.device_type == wgpu::DeviceType::Cpu;
        let capabilities = Capabilities {
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups,
            subgroup_attention: subgroups && options.subgroup_attention.unwrap_or(!cpu),
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            subgroup_min_size: adapter_info.subgroup_min_size,
            subgroup_max_size: adapter_info.subgroup_max_size,
        };
        let limits = device.limits();
        log::info!(
            "focal: adapter {:?} ({:?}, {:?}), f16 {}, subgroups {}, timestamps {}",
            adapter_info.name,
            adapter_info.backend,
            adapter_info.device_type,
            capabilities.shader_f16,
            capabilities.subgroups,
            capabilities.timestamps
        );
        Ok(Self {
            inner: Arc::new(ContextInner {
                device,
                queue,
                adapter_info,
                limits,
                capabilities,
                pipelines: PipelineCache::default(),
                device_error,
            }),
        })
    }

    /// Opens the best adapter, blocking the thread until it is ready (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking() -> Result<Self> {
        pollster::block_on(Self::new())
    }

    /// Opens an adapter with `options`, blocking the thread until it is ready (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_options_blocking(options: &ContextOptions) -> Result<Self> {
        pollster::block_on(Self::with_options(options))
    }

    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }

    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }

    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.inner.adapter_info
    }

    /// Limits granted to the device.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.inner.limits
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.inner.capabilities
    }

    pub(crate) fn pipelines(&self) -> &PipelineCache {
        &self.inner.pipelines
    }

    /// Returns an error unless a buffer of `size` bytes fits both the buffer-size and the
    /// storage-binding limits.
    pub fn check_binding_size(&self, what: &str, size: u64) -> Result<()> {
        let limits = self.limits();
        if size > limits.max_buffer_size {
            return Err(Error::BufferTooLarge {
                what: what.to_string(),
                size,
                name: "max_buffer_size",
                limit: limits.max_buffer_size,
            });
        }
        if size > limits.max_storage_buffer_binding_size {
            return Err(Error::BufferTooLarge {
                what: what.to_string(),
                size,
                name: "max_storage_buffer_binding_size",
                limit: limits.max_storage_buffer_binding_size,
            });
        }
        Ok(())
    }

    /// Waits for all submitted work to finish (native only; a no-op in the browser).
    pub fn wait_idle(&self) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        self.inner
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Device(e.to_string()))?;
        Ok(())
    }

    /// Returns the first error the device reported since the last call, as
    /// [`Error::Device`], and clears it.
    ///
    /// wgpu reports a shader the driver rejects, or a command that fails validation, to a
    /// callback rather than to the call that caused it. Every readback checks this, so
    /// such an error fails the operation whose results it would have spoiled instead of
    /// letting it return zeros.
    pub fn take_device_error(&self) -> Result<()> {
        let mut slot = self
            .inner
            .device_error
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match slot.take() {
            Some(message) => Err(Error::Device(message)),
            None => Ok(()),
        }
    }

    /// Returns a multi-line description of the adapter, the features Focal uses and the
    /// key limits, as printed by `focal info`.
    pub fn describe(&self) -> String {
        let info = self.adapter_info();
        let caps = self.capabilities();
        let limits = self.limits();
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        let mut s = String::new();
        s += &format!("adapter:        {}\n", info.name);
        s += &format!("backend:        {:?}\n", info.backend);
        s += &format!("device type:    {:?}\n", info.device_type);
        s += &format!("driver:         {} {}\n", info.driver, info.driver_info);
        s += &format!("shader-f16:     {}\n", yes_no(caps.shader_f16));
        s += &format!(
            "subgroups:      {} (size {}..{})\n",
            yes_no(caps.subgroups),
            caps.subgroup_min_size,
            caps.subgroup_max_size
        );
        s += &format!(
            "attention:      {} decode kernels\n",
            if caps.subgroup_attention {
                "subgroup"
            } else {
                "plain"
            }
        );
        s += &format!("timestamps:     {}\n", yes_no(caps.timestamps));
        s += &format!("max buffer:     {} MiB\n", limits.max_buffer_size >> 20);
        s += &format!(
            "max binding:    {} MiB (storage), {} KiB (uniform)\n",
            limits.max_storage_buffer_binding_size >> 20,
            limits.max_uniform_buffer_binding_size >> 10
        );
        s += &format!(
            "workgroup:      {} B shared memory, {} invocations, size {}x{}x{}\n",
            limits.max_compute_workgroup_storage_size,
            limits.max_compute_invocations_per_workgroup,
            limits.max_compute_workgroup_size_x,
            limits.max_compute_workgroup_size_y,
            limits.max_compute_workgroup_size_z
        );
        s += &format!(
            "dispatch:       {} workgroups per dimension\n",
            limits.max_compute_workgroups_per_dimension
        );
        s += &format!(
            "storage:        {} buffers per stage\n",
            limits.max_storage_buffers_per_shader_stage
        );
        s
    }
}
