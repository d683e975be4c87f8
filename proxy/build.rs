//! Link-time settings of the `sluice-proxy` binary.
//!
//! On Linux with glibc, the binary's relative relocations are packed
//! (`-z pack-relative-relocs`, DT_RELR, glibc >= 2.36, binutils >= 2.38;
//! older linkers ignore the option with a warning). A position-independent
//! executable carries one relocation per pointer in its read-only data
//! (vtables, string tables, panic locations): about 30,000 entries here,
//! 700 KiB that the loader reads at every start and that stayed resident.
//! Packed, they take a few KiB; the idle proxy's resident memory shrinks
//! by as much (`tests/bench/proxy-memory`).

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
