//! `focal generate`: streams a model's answer to a prompt or chat message, and the model
//! loading shared by the model commands.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use focal::model::{ChatMessage, GenerateOptions, Generator, HfFiles, Model};
use focal::{Context, Error, Result};

/// Model file that `just fetch-model` downloads.
pub const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Model location and prompt, shared by the model commands.
#[derive(clap::Args, Clone, Debug)]
pub struct PromptArgs {
    /// A GGUF file, or a Hugging Face folder with config.json, model.safetensors and
    /// tokenizer.json, plus tokenizer_config.json and chat_template.jinja when present.
    /// Default: the model `just fetch-model` downloads.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Raw prompt text, passed to the model as is.
    pub prompt: Option<String>,
    /// A user message, wrapped in the model's chat template (instead of PROMPT).
    #[arg(long, conflicts_with = "prompt")]
    pub chat: Option<String>,
    /// System message for --chat; default: the template's own.
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
}

#[derive(clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub device: crate::DeviceArgs,
    #[command(flatten)]
    pub prompt: PromptArgs,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy decoding.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    /// Sample from the k most likely tokens only; 0 disables the cut.
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Sample from the smallest set of tokens whose probability reaches p (0 < p <= 1).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Penalty for tokens already in the sequence; 1 disables it.
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// Seed of the sampler's random numbers.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when the text contains this string (repeatable; not printed).
    #[arg(long)]
    pub stop: Vec<OsString>,
}

/// Returns the model path: the one given, else the fetched model in the working folder
/// or in the repository this binary was built from.
fn model_path(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path.to_path_buf());
    }
    let local = PathBuf::from(DEFAULT_MODEL);
    if local.exists() {
        return Ok(local);
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(DEFAULT_MODEL);
    if repo.exists() {
        return Ok(repo);
    }
    Err(Error::Io {
        path: DEFAULT_MODEL.into(),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "model not found: run `just fetch-model` or pass --model PATH",
        ),
    })
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Reads a file that may be absent, returning `None` when it does not exist and an error
/// when it exists but cannot be read.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// The files of a Hugging Face model folder, read into memory.
struct HfFolder {
    /// The folder's own name, which names the model.
    name: Option<String>,
    config_json: Vec<u8>,
    safetensors: Vec<u8>,
    tokenizer_json: Vec<u8>,
    tokenizer_config: Option<Vec<u8>>,
    /// `chat_template.jinja`, which replaces the template in `tokenizer_config.json`.
    chat_template: Option<Vec<u8>>,
}

impl HfFolder {
    /// Reads config.json, model.safetensors and tokenizer.json, and tokenizer_config.json
    /// and chat_template.jinja when they exist.
    fn read(dir: &Path) -> Result<Self> {
        Ok(Self {
            name: folder_name(dir),
            config_json: read(&dir.join("config.json"))?,
            safetensors: read(&dir.join("model.safetensors"))?,
            tokenizer_json: read(&dir.join("tokenizer.json"))?,
            tokenizer_config: read_optional(&dir.join("tokenizer_config.json"))?,
            chat_template: read_optional(&dir.join("chat_template.jinja"))?,
        })
    }

    fn files(&self) -> HfFiles<'_> {
        HfFiles {
            tokenizer_config: self.tokenizer_config.as_deref(),
            chat_template: self.chat_template.as_deref(),
            name: self.name.as_deref(),
            ..HfFiles::new(&self.config_json, &self.safetensors, &self.tokenizer_json)
        }
    }
}

/// Returns the last component of `dir`, resolving paths such as `.` that have none.
fn folder_name(dir: &Path) -> Option<String> {
    let name = match dir.file_name() {
        Some(name) => name.to_os_string(),
        None => dir.canonicalize().ok()?.file_name()?.to_os_string(),
    };
    Some(name.to_string_lossy().into_owned())
}

/// Loads the model at `path` (GGUF file or Hugging Face folder) with a progress bar. A
/// folder's model is named after the folder.
pub fn load_model(ctx: &Context, given: Option<&Path>) -> Result<Model> {
    let path = model_path(given)?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("loading {msg} [{bar:30}] {pos}/{len} tensors")
            .expect("static progress template")
            .progress_chars("=> "),
    );
    bar.set_message(path.display().to_string());
    let mut progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let model = if path.is_dir() {
        let folder = HfFolder::read(&path)?;
        Model::from_hf_files(ctx, &folder.files(), &mut progress)?
    } else {
        Model::from_gguf(ctx, &read(&path)?, &mut progress)?
    };
    bar.finish_and_clear();
    Ok(model)
}

/// Returns the prompt's token ids, from raw text or a chat message.
pub fn prompt_tokens(model: &Model, args: &PromptArgs, default: &str) -> Result<Vec<u32>> {
    let tokenizer = model.tokenizer();
    let text = match (&args.chat, &args.prompt) {
        (Some(message), _) => {
            let mut messages = Vec::new();
            if let Some(system) = &args.system {
                messages.push(ChatMessage::new("system", system));
            }
            messages.push(ChatMessage::new("user", message));
            tokenizer.apply_chat_template(&messages, true)?
        }
        (None, Some(prompt)) => prompt.clone(),
        (None, None) => default.to_string(),
    };
    if text.is_empty() {
        return Err(Error::Generation(
            "the prompt is empty: pass PROMPT or --chat MESSAGE".into(),
        ));
    }
    tokenizer.encode(&text)
}

pub fn run(args: &GenerateArgs) -> Result<()> {
    let stop_bytes: Vec<Vec<u8>> = args
        .stop
        .iter()
        .map(|s| s.as_encoded_bytes().to_vec())
        .collect();
    let options = GenerateOptions {
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
        stop_strings: GenerateOptions::stop_strings_from_bytes(&stop_bytes)?,
    };
    options.validate()?;

    let start = Instant::now();
    let ctx = args.device.context()?;
    let model = load_model(&ctx, args.prompt.model.as_deref())?;
    let loaded = start.elapsed().as_secs_f64();
    let prompt = prompt_tokens(&model, &args.prompt, "")?;

    let mut generator = Generator::new(&model, &prompt, options)?;
    let prefill_start = Instant::now();
    pollster::block_on(generator.prefill())?;
    let prefill = prefill_start.elapsed().as_secs_f64();

    let decode_start = Instant::now();
    let mut stdout = std::io::stdout();
    let reason = generator.run_blocking(|step| {
        let _ = write!(stdout, "{}", step.text);
        let _ = stdout.flush();
        true
    })?;
    let decode = decode_start.elapsed().as_secs_f64();
    let generated = generator.generated().len();
    println!();
    eprintln!(
        "[{}: load {loaded:.2} s | prefill {} tokens, {:.1} tokens/s | decode {generated} tokens, \
         {:.1} tokens/s | stop: {reason:?}]",
        model.name(),
        prompt.len(),
        prompt.len() as f64 / prefill,
        generated as f64 / decode.max(1e-9),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temporary folder, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(label: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("focal-{label}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn write(&self, name: &str, contents: &str) {
            std::fs::write(self.0.join(name), contents).unwrap();
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn write_required(dir: &TempDir) {
        dir.write("config.json", "{config}");
        dir.write("model.safetensors", "weights");
        dir.write("tokenizer.json", "{tokenizer}");
    }

    #[test]
    fn folder_reads_optional_files() {
        let dir = TempDir::new("hf-optional");
        write_required(&dir);
        let folder = HfFolder::read(&dir.0).unwrap();
        assert_eq!(folder.config_json, b"{config}");
        assert_eq!(folder.safetensors, b"weights");
        assert_eq!(folder.tokenizer_json, b"{tokenizer}");
        assert_eq!(folder.tokenizer_config, None);
        assert_eq!(folder.chat_template, None);

        dir.write("tokenizer_config.json", "{\"chat_template\": \"config\"}");
        dir.write("chat_template.jinja", "{{ messages }}");
        let folder = HfFolder::read(&dir.0).unwrap();
        let files = folder.files();
        assert_eq!(
            files.tokenizer_config,
            Some(&b"{\"chat_template\": \"config\"}"[..])
        );
        assert_eq!(files.chat_template, Some(&b"{{ messages }}"[..]));
        assert_eq!(files.config_json, b"{config}");
    }

    #[test]
    fn folder_names_the_model() {
        let dir = TempDir::new("hf-name");
        write_required(&dir);
        let want = dir.0.file_name().unwrap().to_str().unwrap().to_string();
        let folder = HfFolder::read(&dir.0).unwrap();
        assert_eq!(folder.name.as_deref(), Some(want.as_str()));
        assert_eq!(folder.files().name, Some(want.as_str()));

        let with_slash = PathBuf::from(format!("{}/", dir.0.display()));
        assert_eq!(folder_name(&with_slash).as_deref(), Some(want.as_str()));
        let dotted = dir.0.join(".");
        assert_eq!(folder_name(&dotted).as_deref(), Some(want.as_str()));
        assert_eq!(folder_name(Path::new("/")), None);
    }

    #[test]
    fn folder_errors_name_the_file() {
        let dir = TempDir::new("hf-errors");
        dir.write("config.json", "{}");
        dir.write("model.safetensors", "weights");
        match HfFolder::read(&dir.0) {
            Err(Error::Io { path, source }) => {
                assert!(path.ends_with("tokenizer.json"), "path {path}");
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("expected an I/O error, found {:?}", other.err()),
        }

        // An optional file that exists but cannot be read is an error, not an absent file.
        dir.write("tokenizer.json", "{}");
        std::fs::create_dir(dir.0.join("chat_template.jinja")).unwrap();
        match HfFolder::read(&dir.0) {
            Err(Error::Io { path, .. }) => {
                assert!(path.ends_with("chat_template.jinja"), "path {path}")
            }
            other => panic!("expected an I/O error, found {:?}", other.err()),
        }
    }
}
