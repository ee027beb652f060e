//! `focal serve`: a small static HTTP server for the browser demo.
//!
//! Serves the files under `--root` and the model file at [`MODEL_URL_PATH`], on 127.0.0.1
//! only. Every response carries `Content-Length`, so the page can show download progress.
//! Each connection gets one thread and is closed after one response. That is enough for one
//! person's browser and keeps the server free of dependencies.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// URL path at which the model file is served, whatever its name on disk.
pub const MODEL_URL_PATH: &str = "/model.gguf";

/// Maximum size of a request head (request line plus headers) in bytes.
const MAX_REQUEST_HEAD: u64 = 16 * 1024;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Folder served at `/` (the demo page and its built wasm in pkg/).
    #[arg(long, default_value = "web")]
    pub root: PathBuf,
    /// Model file served at /model.gguf.
    #[arg(long, default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    pub model: PathBuf,
    /// TCP port on 127.0.0.1 (0 picks a free port).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
}

/// Binds 127.0.0.1, prints the page URL and serves requests until the process ends.
///
/// Errors when the root has no index.html or the port cannot be bound.
pub fn run(args: &ServeArgs) -> focal::Result<()> {
    let index = args.root.join("index.html");
    if !index.is_file() {
        return Err(focal::Error::Io {
            path: index.display().to_string(),
            source: io::Error::new(
                io::ErrorKind::NotFound,
                "file not found: pass --root with the demo page folder",
            ),
        });
    }
    if !args.model.is_file() {
        log::warn!(
            "model file {} not found: the page will report it (run `just fetch-model`)",
            args.model.display()
        );
    }

    let address = format!("127.0.0.1:{}", args.port);
    let io_error = |source: io::Error| focal::Error::Io {
        path: address.clone(),
        source,
    };
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, args.port)).map_err(io_error)?;
    let port = listener.local_addr().map_err(io_error)?.port();
    println!("Focal demo: http://127.0.0.1:{port}/");
    println!(
        "serving {} and {} at {MODEL_URL_PATH}; press Ctrl-C to stop",
        args.root.display(),
        args.model.display()
    );
    io::stdout().flush().map_err(io_error)?;

    let site = Site {
        root: args.root.clone(),
        model: args.model.clone(),
    };
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let site = site.clone();
                std::thread::spawn(move || {
                    if let Err(e) = site.handle(stream) {
                        log::warn!("connection failed: {e}");
                    }
                });
            }
            Err(e) => log::warn!("accepting a connection failed: {e}"),
        }
    }
    Ok(())
}

/// The files one server serves.
#[derive(Clone, Debug)]
struct Site {
    root: PathBuf,
    model: PathBuf,
}

/// A parsed request line.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    path: String,
}

impl Site {
    fn handle(&self, mut stream: TcpStream) -> io::Result<()> {
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let request = match read_request(&stream) {
            Ok(request) => request,
            Err(e) => {
                log::warn!("invalid request: {e}");
                return send_text(&mut stream, "400 Bad Request", &format!("{e}\n"), true);
            }
        };
        let head_only = request.method == "HEAD";
        if request.method != "GET" && !head_only {
            let body = format!("method {} not allowed: use GET or HEAD\n", request.method);
            return send_text(&mut stream, "405 Method Not Allowed", &body, false);
        }

        let Some(file_path) = self.resolve(&request.path) else {
            let body = format!("invalid path {:?}\n", request.path);
            return send_text(&mut stream, "400 Bad Request", &body, head_only);
        };
        let file = match File::open(&file_path).and_then(|f| f.metadata().map(|m| (f, m))) {
            Ok((file, meta)) if meta.is_file() => (file, meta.len()),
            _ => {
                log::info!("404 {}", request.path);
                let body = if request.path == MODEL_URL_PATH {
                    format!(
                        "model file {} not found on the server: run `just fetch-model`\n",
                        self.model.display()
                    )
                } else {
                    format!("{} not found\n", request.path)
                };
                return send_text(&mut stream, "404 Not Found", &body, head_only);
            }
        };

        let (mut file, length) = file;
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {length}\r\n\
             Cache-Control: no-cache\r\nConnection: close\r\n\r\n",
            mime_type(&file_path)
        );
        stream.write_all(head.as_bytes())?;
        if !head_only {
            io::copy(&mut file, &mut stream)?;
        }
        stream.flush()
    }

    /// Maps a URL path to a file: the model at [`MODEL_URL_PATH`], anything else under
    /// the root. Returns `None` for paths that climb out of the root.
    fn resolve(&self, url_path: &str) -> Option<PathBuf> {
        let path = url_path.split(['?', '#']).next().unwrap_or("");
        if path == MODEL_URL_PATH {
            return Some(self.model.clone());
        }
        let decoded = percent_decode(path.strip_prefix('/')?)?;
        let mut resolved = self.root.clone();
        for component in Path::new(&decoded).components() {
            match component {
                Component::Normal(part) => resolved.push(part),
                Component::CurDir => {}
                _ => return None,
            }
        }
        if decoded.is_empty() || decoded.ends_with('/') {
            resolved.push("index.html");
        }
        Some(resolved)
    }
}

/// Reads the request line and skips the headers, which this server does not use.
fn read_request(stream: &TcpStream) -> io::Result<Request> {
    let mut reader = BufReader::new(stream.take(MAX_REQUEST_HEAD));
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(path), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("malformed request line {:?}", line.trim_end()),
        ));
    };
    if !version.starts_with("HTTP/1.") || !path.starts_with('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unsupported request line {:?}", line.trim_end()),
        ));
    }
    let request = Request {
        method: method.to_string(),
        path: path.to_string(),
    };

    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim_end().is_empty() {
            break;
        }
    }
    Ok(request)
}

fn send_text(stream: &mut TcpStream, status: &str, body: &str, head_only: bool) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    if !head_only {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()
}

/// Returns the `Content-Type` for a file, chosen by its extension.
fn mime_type(path: &Path) -> &'static str {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("wasm") => "application/wasm",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("txt" | "md") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Decodes `%XX` escapes. Returns `None` for a malformed escape or invalid UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> Site {
        Site {
            root: PathBuf::from("/srv/web"),
            model: PathBuf::from("/data/m.gguf"),
        }
    }

    #[test]
    fn mime_types_by_extension() {
        assert_eq!(
            mime_type(Path::new("pkg/focal_web_bg.wasm")),
            "application/wasm"
        );
        assert_eq!(
            mime_type(Path::new("app.js")),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(
            mime_type(Path::new("INDEX.HTML")),
            "text/html; charset=utf-8"
        );
        assert_eq!(mime_type(Path::new("style.css")), "text/css; charset=utf-8");
        assert_eq!(
            mime_type(Path::new("model.gguf")),
            "application/octet-stream"
        );
    }

    #[test]
    fn resolve_maps_root_and_model() {
        let site = site();
        assert_eq!(
            site.resolve("/"),
            Some(PathBuf::from("/srv/web/index.html"))
        );
        assert_eq!(
            site.resolve("/pkg/focal_web.js?v=2"),
            Some(PathBuf::from("/srv/web/pkg/focal_web.js"))
        );
        assert_eq!(
            site.resolve("/model.gguf"),
            Some(PathBuf::from("/data/m.gguf"))
        );
        assert_eq!(
            site.resolve("/a%20b.txt"),
            Some(PathBuf::from("/srv/web/a b.txt"))
        );
    }

    #[test]
    fn resolve_rejects_traversal() {
        let site = site();
        assert_eq!(site.resolve("/../etc/passwd"), None);
        assert_eq!(site.resolve("/pkg/%2e%2e/%2e%2e/secret"), None);
        assert_eq!(site.resolve("/%zz"), None);
    }

    /// Starts a server thread on a free port over a temporary folder and returns its port.
    fn spawn_server(root: &Path, model: &Path) -> u16 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let site = Site {
            root: root.to_path_buf(),
            model: model.to_path_buf(),
        };
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                site.handle(stream).unwrap();
            }
        });
        port
    }

    fn fetch(port: u16, request: &str) -> String {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    #[test]
    fn server_sends_files_with_length() {
        let dir = std::env::temp_dir().join(format!("focal-serve-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("pkg")).unwrap();
        std::fs::write(dir.join("index.html"), "<p>hi</p>").unwrap();
        std::fs::write(dir.join("pkg/x.wasm"), [0u8, 97, 115, 109]).unwrap();
        std::fs::write(dir.join("m.gguf"), "GGUF....").unwrap();
        let port = spawn_server(&dir, &dir.join("m.gguf"));

        let page = fetch(port, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
        assert!(
            page.contains("Content-Type: text/html; charset=utf-8\r\n"),
            "{page}"
        );
        assert!(page.contains("Content-Length: 9\r\n"), "{page}");
        assert!(page.ends_with("\r\n\r\n<p>hi</p>"), "{page}");

        let wasm = fetch(port, "HEAD /pkg/x.wasm HTTP/1.1\r\n\r\n");
        assert!(
            wasm.contains("Content-Type: application/wasm\r\n"),
            "{wasm}"
        );
        assert!(wasm.contains("Content-Length: 4\r\n"), "{wasm}");
        assert!(wasm.ends_with("\r\n\r\n"), "HEAD must send no body: {wasm}");

        let model = fetch(port, "GET /model.gguf HTTP/1.1\r\n\r\n");
        assert!(model.contains("Content-Length: 8\r\n"), "{model}");
        assert!(model.ends_with("GGUF...."), "{model}");

        let missing = fetch(port, "GET /nope.js HTTP/1.1\r\n\r\n");
        assert!(
            missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{missing}"
        );

        let post = fetch(port, "POST / HTTP/1.1\r\n\r\n");
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");

        let garbage = fetch(port, "hello\r\n\r\n");
        assert!(garbage.starts_with("HTTP/1.1 400 "), "{garbage}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn server_reports_missing_model() {
        let dir = std::env::temp_dir().join(format!("focal-serve-nomodel-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("index.html"), "x").unwrap();
        let port = spawn_server(&dir, &dir.join("absent.gguf"));

        let response = fetch(port, "GET /model.gguf HTTP/1.1\r\n\r\n");
        assert!(
            response.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{response}"
        );
        assert!(response.contains("just fetch-model"), "{response}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
