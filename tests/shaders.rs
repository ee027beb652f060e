//! Every WGSL file in `shaders/` parses and validates with naga, for f32 without the
//! f16 capability and for f16 with it, with and without subgroups, and with each
//! boolean `#default` flag flipped.

use std::path::Path;

use focal::shader::{preprocess, validate, Variant, SHADER_FILES};
use focal::DType;

fn shader_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../shaders"))
}

/// Boolean flags declared with `#default NAME true|false` in a source.
fn flags(source: &str) -> Vec<String> {
    source
        .lines()
        .filter_map(|line| {
            let mut words = line.trim().strip_prefix("#default")?.split_whitespace();
            let name = words.next()?;
            matches!(words.next()?, "true" | "false").then(|| name.to_string())
        })
        .collect()
}

#[test]
fn every_file_is_shipped() {
    for entry in std::fs::read_dir(shader_dir()).expect("shaders/ is readable") {
        let name = entry
            .expect("directory entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".wgsl") {
            assert!(
                SHADER_FILES.iter().any(|(shipped, _)| *shipped == name),
                "shaders/{name} is not listed in SHADER_FILES"
            );
        }
    }
}

#[test]
fn every_variant_validates() {
    let mut checked = 0;
    for entry in std::fs::read_dir(shader_dir()).expect("shaders/ is readable") {
        let path = entry.expect("directory entry").path();
        if path.extension().is_none_or(|e| e != "wgsl") {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let source = std::fs::read_to_string(&path).expect("shader is readable");
        let uses_subgroups = source.contains("SUBGROUPS");
        let mut variants = Vec::new();
        for dtype in [DType::F32, DType::F16] {
            for subgroups in [false, true] {
                if subgroups && !uses_subgroups {
                    continue;
                }
                let base = Variant::new(dtype).with_subgroups(subgroups);
                variants.push(base.clone());
                for flag in flags(&source) {
                    variants.push(base.clone().flag(&flag, true));
                }
            }
        }
        for variant in &variants {
            let pre = preprocess(&name, &source, variant)
                .unwrap_or_else(|e| panic!("{name} {variant:?}: {e}"));
            validate(&name, &pre, variant).unwrap_or_else(|e| panic!("{name} {variant:?}: {e}"));
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} variants were validated");
}

#[test]
fn f32_variant_needs_no_f16() {
    for (name, source) in SHADER_FILES {
        let variant = Variant::new(DType::F32);
        let pre = preprocess(name, source, &variant).unwrap();
        assert!(
            !pre.source.contains("enable f16"),
            "{name} enables f16 in its f32 variant"
        );
        validate(name, &pre, &variant).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn errors_name_file_and_line() {
    let source = "fn broken() {\n    let x: u32 = 1.5;\n}\n";
    let variant = Variant::new(DType::F32);
    let pre = preprocess("broken.wgsl", source, &variant).unwrap();
    let err = validate("broken.wgsl", &pre, &variant)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("shader broken.wgsl:2:"), "error was: {err}");
}

#[test]
fn preprocessor_rejects_unbalanced_blocks() {
    let variant = Variant::new(DType::F32);
    let err = preprocess("a.wgsl", "#if X\nfn f() {}\n", &variant)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not closed"), "error was: {err}");
    let err = preprocess("a.wgsl", "#endif\n", &variant)
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 1"), "error was: {err}");
    let err = preprocess("a.wgsl", "#if X\n#else\n#else\n#endif\n", &variant).unwrap_err();
    assert!(err.to_string().contains("line 3"), "error was: {err}");
}

#[test]
fn preprocessor_selects_branches() {
    let source = "#default A false\n#if A\nyes\n#else\nno\n#endif\n#ifdef F16\nhalf\n#endif\n";
    let off = preprocess("t.wgsl", source, &Variant::new(DType::F32))
        .unwrap()
        .source;
    assert!(off.contains("no"), "{off}");
    assert!(!off.contains("yes"), "{off}");
    assert!(!off.contains("half"), "{off}");
    let on = preprocess("t.wgsl", source, &Variant::new(DType::F16).flag("A", true))
        .unwrap()
        .source;
    assert!(on.contains("yes"), "{on}");
    assert!(!on.contains("\nno\n"), "{on}");
    assert!(on.contains("half"), "{on}");
    assert!(on.starts_with("enable f16;"));
}
