//! Link-time settings of the `sluice-proxy` binary, on Linux with glibc.
//!
//! - The binary's relative relocations are packed (`-z
//!   pack-relative-relocs`, DT_RELR, glibc >= 2.36, binutils >= 2.38;
//!   older linkers ignore the option with a warning). A
//!   position-independent executable carries one relocation per pointer in
//!   its read-only data (vtables, string tables, panic locations): about
//!   30,000 entries here, 700 KiB that the loader reads at every start and
//!   that stayed resident. Packed, they take a few KiB; the idle proxy's
//!   resident memory shrinks by as much (`tests/bench/proxy-memory`).
//! - In release builds, the functions that run at start-up, then those on
//!   the request path, are laid out together at the front of the code
//!   (`link/layout.ld`, a linker script that `INSERT`s two output sections
//!   before `.text`; LLD, Rust's default linker here, and GNU ld both read
//!   it). The kernel maps code 64 KiB or more around each page first
//!   touched, so the ~700 start-up functions spread over 12 MiB of code kept
//!   about 4.4 MiB of it resident in an idle proxy; together they keep about
//!   1.5 MiB. The script names functions by symbol with the per-build
//!   hashes as wildcards; one it no longer matches falls back to the default
//!   place. `tests/bench/link-layout` writes it from a run under callgrind.

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
        if std::env::var("PROFILE").as_deref() == Ok("release") {
            let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
            let layout = std::path::Path::new(&dir).join("link").join("layout.ld");
            println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", layout.display());
            println!("cargo:rerun-if-changed=link/layout.ld");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
