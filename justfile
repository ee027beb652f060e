# Focal's recipes. `just test` is what CI runs; `just demo` serves the browser demo.

set shell := ["bash", "-euo", "pipefail", "-c"]

wasm_out := "web/pkg"

# Run the browser demo: fetch the model, build the wasm crate and serve web/.
demo: fetch-model build-web
    cargo run --release -p focal-cli -- serve --root web --model models/SmolLM2-135M-Instruct.Q4_1.gguf

# Everything CI checks: formatting, lints, native GPU tests, the wasm build and the browser tests.
test: fetch-model fmt-check clippy test-native build-web e2e

fmt-check:
    cargo fmt --all --check

clippy:
    cargo clippy --workspace --all-targets -- -D warnings

# Native tests on the real wgpu adapter (lavapipe on machines without a GPU).
test-native:
    cargo test --workspace --release

# Build the wasm crate in release and generate its JS bindings into web/pkg.
build-web:
    cargo build -p focal-web --release --target wasm32-unknown-unknown
    wasm-bindgen --target web --no-typescript --out-dir {{wasm_out}} \
        target/wasm32-unknown-unknown/release/focal_web.wasm
    if [ -x node_modules/.bin/wasm-opt ]; then \
        node_modules/.bin/wasm-opt -O2 --enable-bulk-memory --enable-nontrapping-float-to-int \
            {{wasm_out}}/focal_web_bg.wasm -o {{wasm_out}}/focal_web_bg.wasm; \
    else \
        echo "wasm-opt not found (npm install binaryen@132 adds it): wasm left unoptimised"; \
    fi

# Browser tests: the demo page in headless Chromium (/usr/bin/chromium) on SwiftShader
# WebGPU, driven by playwright-core; the screenshot lands in target/e2e/demo.png.
e2e: fetch-model build-web
    cargo build --release -p focal-cli
    cargo build --release -p focal-web --example native_attention
    cd tests/e2e && { [ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund; } && npm test

# Benchmarks: prints tables; record them in BENCHMARKS.md.
bench *args:
    cargo run --release -p focal-cli -- bench {{args}}
    # The numpy baseline runs the attention shapes on the CPU, for every benchmark but matmul.
    if [ "{{args}}" != "matmul" ] && python3 -c 'import numpy' 2>/dev/null; then \
        python3 tests/baselines/attention_numpy.py $(echo "{{args}}" | grep -o -- --quick || true); \
    else \
        echo "numpy baseline skipped (benchmark {{args}}, or python3 has no numpy)"; \
    fi

# Print the adapter and the features and limits Focal uses.
info:
    cargo run --release -p focal-cli -- info

# Download the SmolLM2-135M-Instruct GGUF into models/ and check its sha256 (skips a good file).
fetch-model:
    tests/fetch_model.sh
