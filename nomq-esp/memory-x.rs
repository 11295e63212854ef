//! Build script shared by the bare-metal firmwares (qemu-test, footprint): copies the
//! package's `memory-<arch>.x` to `memory.x` in OUT_DIR, where cortex-m-rt's or riscv-rt's
//! link.x finds it.
fn main() {
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let src = if arch == "riscv32" { "memory-riscv.x" } else { "memory-arm.x" };
    std::fs::copy(src, out.join("memory.x")).unwrap();
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory-arm.x");
    println!("cargo:rerun-if-changed=memory-riscv.x");
}
