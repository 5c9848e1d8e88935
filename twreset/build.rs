//! Point the embedded-object macro at the eBPF object that `cargo xtask` built.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=TWRESET_EBPF_OBJ");
    let obj = std::env::var_os("TWRESET_EBPF_OBJ").map(PathBuf::from).unwrap_or_else(|| {
        let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("..");
        let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
        target.join("bpfel-unknown-none/release/twreset")
    });
    if !obj.exists() {
        panic!(
            "eBPF object {} not found: build with `cargo xtask build` (it builds the eBPF crate first)",
            obj.display()
        );
    }
    println!("cargo:rerun-if-changed={}", obj.display());
    println!("cargo:rustc-env=TWRESET_EBPF_OBJ={}", obj.display());
}
