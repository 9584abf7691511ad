//! Embeds the built web app (`web-dist/`, produced by `npm run build` in
//! `web/` and committed) into the binary: writes `$OUT_DIR/web_assets.rs`,
//! a table of `(path, content type, ETag, bytes)` with `include_bytes!`, so a
//! server runs with no npm step and no files beside it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Files larger than this are refused: the web app is small, and a huge file
/// in `web-dist/` is a mistake that would bloat every binary.
const ASSET_BYTES_MAX: u64 = 4 * 1024 * 1024;

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("web-dist");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    if root.is_dir() {
        collect(&root, &root, &mut files);
    }
    // Sorted, so the generated table (and the binary) does not depend on
    // the order the file system lists entries in.
    files.sort();
    let mut out = String::from("&[\n");
    for rel in &files {
        let full = root.join(rel);
        let size = std::fs::metadata(&full).unwrap().len();
        assert!(
            size <= ASSET_BYTES_MAX,
            "{} is {size} bytes, more than {ASSET_BYTES_MAX}",
            full.display()
        );
        let etag = format!("\"{:016x}\"", fnv1a(&std::fs::read(&full).unwrap()));
        writeln!(
            out,
            "    ({rel:?}, {:?}, {etag:?}, include_bytes!({:?})),",
            content_type(rel),
            full.display().to_string()
        )
        .unwrap();
    }
    out.push(']');
    let dest = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("web_assets.rs");
    std::fs::write(dest, out).unwrap();
}

/// Every file under `dir`, as a `/`-separated path relative to `root`.
fn collect(root: &Path, dir: &Path, files: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(root, &path, files);
        } else {
            let rel = path.strip_prefix(root).unwrap();
            let parts: Vec<_> = rel.iter().map(|p| p.to_str().unwrap()).collect();
            files.push(parts.join("/"));
        }
    }
}

/// The `Content-Type` for a file name, by extension.
fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("webmanifest") => "application/manifest+json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("txt") => "text/plain; charset=utf-8",
        Some("woff2") => "font/woff2",
        _ => "application/octet-stream",
    }
}

/// FNV-1a, 64 bits: a stable fingerprint of a file for its ETag (not a
/// security measure; it only has to change when the file does).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
