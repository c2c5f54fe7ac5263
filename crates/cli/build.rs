//! Lays out the release binary's code so that what the sidecar runs sits together.
//!
//! `sidecar.order` lists the functions that `ama proxy sidecar` ran under the bench's HTTP/1.1
//! and gRPC load (callgrind, most expensive first; `bench/layout/refresh` regenerates it). lld
//! places them at the start of `.text`. The sidecar's resident code is then the few MB it uses
//! rather than every page-cache folio the scattered hot functions fall into: idle VmRSS
//! 16.4 -> 11 MB in the bench. A name missing from the binary (the code changed since the
//! profile) is skipped, so a stale list costs memory, never correctness.
//!
//! Only for release builds for x86_64-unknown-linux-gnu, whose default linker since Rust 1.90 is
//! lld (GNU ld has no `--symbol-ordering-file`). `AMA_SYMBOL_ORDER=off` turns it off, for a
//! toolchain set up to link with another linker.

fn main() {
    println!("cargo:rerun-if-changed=sidecar.order");
    println!("cargo:rerun-if-env-changed=AMA_SYMBOL_ORDER");
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    if env("TARGET") != "x86_64-unknown-linux-gnu"
        || env("PROFILE") != "release"
        || env("AMA_SYMBOL_ORDER") == "off"
    {
        return;
    }
    let order = std::path::Path::new(&env("CARGO_MANIFEST_DIR")).join("sidecar.order");
    println!(
        "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    // The relative relocations of a PIE as a bitmap (RELR, glibc >= 2.36) instead of 24 bytes
    // each: .rela.dyn, read whole at every start, goes from ~650 KB to a few KB.
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
}
