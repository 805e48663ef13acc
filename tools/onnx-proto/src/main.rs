//! Compiles ONNX's `onnx.proto` (pure Rust, no `protoc`) and writes the prost types to the
//! path given: `cargo run --manifest-path tools/onnx-proto/Cargo.toml -- PROTO OUT.rs`.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, proto, out] = &args[..] else {
        eprintln!("usage: onnx-proto-gen PROTO OUT.rs");
        std::process::exit(2);
    };
    let dir = std::path::Path::new(proto).parent().expect("a folder");
    let fds = protox::compile([proto], [dir]).unwrap_or_else(|e| panic!("{proto}: {e}"));
    let tmp = std::env::temp_dir().join(format!("onnx-proto-gen-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("a temporary folder");
    prost_build::Config::new()
        .out_dir(&tmp)
        .compile_fds(fds)
        .expect("prost code generation");
    let code = std::fs::read_to_string(tmp.join("onnx.rs")).expect("onnx.rs generated");
    let head = "// Generated from ONNX's onnx.proto (src/onnx/onnx.proto) by scripts/gen-onnx-proto\n// (prost-build); do not edit.\n";
    std::fs::write(out, format!("{head}{code}")).expect("writing the output");
    let _ = std::fs::remove_dir_all(&tmp);
}
