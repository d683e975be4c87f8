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
//!   before `.text`). The kernel maps code 64 KiB or more around each page
//!   first touched, so the ~700 functions start-up runs, spread over 9.6 MiB
//!   of code, kept about 4.4 MiB of it resident in an idle proxy; laid out
//!   together they keep about 1.5 MiB (`docs/benchmarks.md`, "Idle
//!   memory"). The script names functions by symbol with the hashes as
//!   wildcards, so it keeps matching from build to build; as a legacy
//!   symbol's hash also tells a generic function's instances apart, every
//!   instance of one that ran comes along (about 2,500 functions, 1.7 MiB).
//!   A function it no longer matches falls back to the default place.
//!   `tests/bench/link-layout` writes it from runs under callgrind.
//!
//!   LLD (Rust's default linker on x86_64 Linux) and GNU ld read the
//!   script; mold and gold do not. `SLUICE_NO_LINK_LAYOUT=1` builds without
//!   it, with the default layout.

use std::path::Path;

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SLUICE_NO_LINK_LAYOUT");
    if os != "linux" || env != "gnu" {
        return;
    }
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    let release = std::env::var("PROFILE").as_deref() == Ok("release");
    let opted_out = std::env::var_os("SLUICE_NO_LINK_LAYOUT").is_some_and(|v| v != "0");
    if !release || opted_out {
        return;
    }
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let layout = Path::new(&dir).join("link").join("layout.ld");
    println!("cargo:rerun-if-changed=link/layout.ld");
    if !layout.is_file() {
        println!(
            "cargo:warning={} is missing: sluice-proxy is linked with the default code layout \
             (tests/bench/link-layout writes it)",
            layout.display()
        );
        return;
    }
    // One argument each, so that a comma in the path stays in it.
    for arg in ["-Xlinker", "-T", "-Xlinker"] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    println!("cargo:rustc-link-arg-bins={}", layout.display());
}
