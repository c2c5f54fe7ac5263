//! The release link's function order (`crates/cli/sidecar.order`) must not go stale in silence.
//!
//! The order lists the functions `ama proxy sidecar` ran under the bench's load, by their
//! release-build symbol names (`crates/cli/build.rs`, `bench/README.md` "Code layout"). When code
//! or dependencies change, names change, lld skips the names it no longer finds, and the sidecar's
//! resident code grows (bench/PROFILE.md: 2 MB of idle RSS). A release build takes ten minutes
//! here, so this test checks the order against the debug build of `ama` that `cargo test` builds
//! anyway.
//!
//! Debug and release names of the same function differ only where no check could use them: the
//! legacy mangling's hash (the profile is part of every crate's `-C metadata`) and the suffixes of
//! the optimiser's clones. With the hash stripped, though, a name no longer tells a function from
//! its other generic instances, nor a crate from the same crate built with other features, and
//! those renames are what stale orders were made of: the order of 8241f5e had 1247 of its 2523
//! names left in the release build of 37d0d01, and 2464 of them, stripped, in its debug build. So
//! `bench/layout/refresh` records next to the order, in `sidecar.order.debug`, the debug build's
//! full names of the functions it lists that map one to one (a stripped name that the order and
//! the debug build each hold once; about two thirds of the order), and this test asks whether the
//! debug build still has them. A debug name goes when the release name does, because both hash
//! the same paths, generic arguments and crates' metadata (dependencies, features, versions):
//! of the 1710 functions so tracked for 8241f5e's order, 617 had lost their debug name at
//! 37d0d01 and their release name too, 1058 had kept both, 35 only their debug name (generic
//! instances the release build now inlines or instantiates in another crate), none only their
//! release name.
//!
//! How cargo builds the debug `ama` changes its names too: the packages selected change the
//! features of their dependencies (`cargo test --workspace` turns on tokio's `test-util` through
//! `crates/memory`'s dev-dependencies, `cargo test -p cli` does not), and `CARGO_INCREMENTAL=0`
//! (CI) gives our crates other metadata than the incremental default. The twin holds the names
//! of all four builds, and a function counts as present when any of its names is.
//!
//! `AMA_SIDECAR_ORDER=record` makes the test add this debug build's names to `sidecar.order.debug`
//! instead, or write it anew when it belongs to another order (bench/layout/refresh does, for the
//! four builds, after writing the order); `AMA_SIDECAR_ORDER_BINARY=PATH` reads another debug `ama`
//! than the one cargo built.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// The least share of the tracked functions that the debug build must still have.
///
/// A stale order costs memory at once: after f0683d1, 2449 of the order's 2514 release names
/// were still in the binary (44 fewer than before it, 1.8 %), and the idle sidecar held 12.0 MB
/// instead of 9.8-10.0 MB (bench/PROFILE.md), since every function the sidecar runs outside the
/// ordered block can keep a whole page-cache folio of cold code resident. The tracked functions
/// lose their names less often than the rest, which are mostly generic instances: 36 % of the
/// tracked against 51 % of all for 8241f5e's order at 37d0d01, 18 % against 36 % for 37d0d01's
/// order at 1b0b57e. At those ratios 1.8 % of all is 0.9-1.3 % of the tracked, so the test fails
/// below 99.5 %, about 9 of the 1781 tracked functions gone; a fresh order has all of them, or
/// all but the one or two that only one of the four builds maps.
const MIN_PRESENT: f64 = 0.995;

/// What to run when the order has gone stale.
const REFRESH: &str = "regenerate the order: `bench/layout/refresh` (as root; a release build and \
     a callgrind profile of both sidecars under the bench's quick load, ~20 min), then commit \
     crates/cli/sidecar.order and crates/cli/sidecar.order.debug";

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn order_path() -> PathBuf {
    manifest_dir().join("sidecar.order")
}

fn twin_path() -> PathBuf {
    manifest_dir().join("sidecar.order.debug")
}

/// The debug `ama` to check against: the one cargo built for this test unless overridden.
fn debug_binary() -> PathBuf {
    std::env::var_os("AMA_SIDECAR_ORDER_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ama")))
}

/// A symbol's name without what differs between a debug and a release build of the same code:
/// the legacy mangling's hash (`17h` + 16 hex digits before the final `E`) and the suffix of a
/// clone the optimiser made (LTO's `.llvm.N`, GCC's `.part.N`, `.constprop.N`, `.cold`). v0 names
/// (`_R…`, the standard library's) keep their crate disambiguators, which hold within one
/// toolchain.
fn key(name: &str) -> &str {
    let base = if name.starts_with("_ZN") {
        // Legacy names escape `.` as `..` inside the path, so a clone's suffix is what follows
        // the path's closing `E`.
        name.rfind('E').map_or(name, |end| &name[..=end])
    } else {
        name.split('.').next().unwrap_or(name)
    };
    // Bytes, not chars: a name is not ours to trust to be ASCII.
    let bytes = base.as_bytes();
    match bytes.len().checked_sub(20).map(|at| (at, &bytes[at..])) {
        Some((at, [b'1', b'7', b'h', hash @ .., b'E']))
            if hash.iter().all(u8::is_ascii_hexdigit) =>
        {
            &base[..at]
        }
        _ => base,
    }
}

/// The names of the code symbols in an ELF file's symbol table.
fn code_symbols(path: &Path) -> BTreeSet<String> {
    use object::{Object, ObjectSymbol, SymbolKind};
    let data = std::fs::read(path)
        .unwrap_or_else(|e| panic!("{}: cannot read the debug ama: {e}", path.display()));
    let file = object::File::parse(&*data)
        .unwrap_or_else(|e| panic!("{}: not an object file: {e}", path.display()));
    let names: BTreeSet<String> = file
        .symbols()
        .filter(|s| s.kind() == SymbolKind::Text && !s.is_undefined())
        .filter_map(|s| s.name().ok().map(str::to_owned))
        .collect();
    assert!(
        !names.is_empty(),
        "{}: no code symbols (a stripped binary?)",
        path.display()
    );
    names
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The order's entries that map one to one onto the debug build, as (line number, debug name):
/// those whose key the order and the debug build each hold once.
fn one_to_one(order: &[String], debug: &BTreeSet<String>) -> Vec<(usize, String)> {
    let mut in_order: HashMap<&str, usize> = HashMap::new();
    for name in order {
        *in_order.entry(key(name)).or_default() += 1;
    }
    let mut in_debug: HashMap<&str, Vec<&str>> = HashMap::new();
    for name in debug {
        in_debug.entry(key(name)).or_default().push(name);
    }
    order
        .iter()
        .enumerate()
        .filter(|(_, name)| in_order[key(name)] == 1)
        .filter_map(
            |(i, name)| match in_debug.get(key(name)).map(Vec::as_slice) {
                Some([only]) => Some((i + 1, (*only).to_owned())),
                _ => None,
            },
        )
        .collect()
}

const TWIN_HEADER: &str = "\
# The debug build's names of the functions of sidecar.order that map one to one (the same name
# without its hash, once in each), as `LINE NAME...`: LINE is the function's line in
# sidecar.order, then its name in each debug build recorded: `cargo test --workspace` and
# `cargo test -p cli`, each incremental and with CARGO_INCREMENTAL=0, build ama with different
# features or metadata, so with different names. Written by bench/layout/refresh
# (AMA_SIDECAR_ORDER=record cargo test ... --test sidecar_order), read by
# crates/cli/tests/sidecar_order.rs to tell that the order went stale.
";

/// `sidecar.order.debug`: for each line of the order it tracks, the debug names recorded.
type Twin = BTreeMap<usize, Vec<String>>;

/// Reads `sidecar.order.debug` and checks each entry against the order's line it names.
fn read_twin(order: &[String]) -> Result<Twin, String> {
    let path = twin_path();
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut twin = Twin::new();
    for (i, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        let mut fields = line.split(' ');
        let number = fields.next().unwrap_or_default();
        let names: Vec<String> = fields.map(str::to_owned).collect();
        let n = number
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=order.len()).contains(n))
            .ok_or_else(|| format!("{at}: {number:?} is no line of sidecar.order"))?;
        if names.is_empty() {
            return Err(format!("{at}: expected `LINE NAME...`, got {line:?}"));
        }
        // A twin written for another order names other functions at its lines.
        if let Some(other) = names.iter().find(|name| key(name) != key(&order[n - 1])) {
            return Err(format!(
                "{at}: sidecar.order.debug is out of step with sidecar.order: line {n} lists \
                 {}, not {other}",
                order[n - 1]
            ));
        }
        twin.insert(n, names);
    }
    Ok(twin)
}

/// Adds this debug build's names to `sidecar.order.debug`, or writes it anew when it is missing
/// or was written for another order.
fn record(order: &[String], debug: &BTreeSet<String>) {
    let mut twin = match read_twin(order) {
        Ok(twin) => twin,
        Err(why) => {
            eprintln!("writing sidecar.order.debug anew ({why})");
            Twin::new()
        }
    };
    let pairs = one_to_one(order, debug);
    for (line, name) in &pairs {
        let names = twin.entry(*line).or_default();
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    let mut out = String::from(TWIN_HEADER);
    for (line, names) in &twin {
        out.push_str(&format!("{line} {}\n", names.join(" ")));
    }
    std::fs::write(twin_path(), out).unwrap_or_else(|e| panic!("{}: {e}", twin_path().display()));
    eprintln!(
        "{}: {} of the order's {} functions map one to one onto {}; {} tracked in all",
        twin_path().display(),
        pairs.len(),
        order.len(),
        debug_binary().display(),
        twin.len()
    );
}

#[test]
fn link_order_names_functions_the_debug_build_still_has() {
    let order = read_lines(&order_path());
    let debug = code_symbols(&debug_binary());
    if std::env::var("AMA_SIDECAR_ORDER").as_deref() == Ok("record") {
        record(&order, &debug);
        return;
    }
    let twin = read_twin(&order).unwrap_or_else(|why| panic!("{why}; {REFRESH}"));
    // Half the list or more maps one to one when the twin is written; far fewer means it was
    // written against another build than the order's, and would prove little.
    assert!(
        twin.len() * 4 >= order.len(),
        "only {} of the order's {} functions are tracked in sidecar.order.debug; {REFRESH}",
        twin.len(),
        order.len()
    );
    let missing: Vec<&str> = twin
        .values()
        .filter(|names| !names.iter().any(|n| debug.contains(n)))
        .map(|names| names[0].as_str())
        .collect();
    let present = twin.len() - missing.len();
    let share = present as f64 / twin.len() as f64;
    eprintln!(
        "sidecar.order: {} functions, {} tracked in the debug build ({}), {present} of them \
         present ({:.1} %, at least {:.1} % needed)",
        order.len(),
        twin.len(),
        debug_binary().display(),
        share * 100.0,
        MIN_PRESENT * 100.0
    );
    // A build unlike the four recorded renames nearly everything; so does a change of the
    // dependencies. Either way, say both.
    let hint = if share < 0.5 {
        "\n(Nearly all are gone: either the dependencies changed, or this ama was built otherwise \
         than `cargo test --workspace` or `cargo test -p cli`, with or without \
         CARGO_INCREMENTAL=0, build it: other packages, features, RUSTFLAGS or profile settings. \
         `cargo test --workspace --test sidecar_order` tells which.)"
    } else {
        ""
    };
    assert!(
        share >= MIN_PRESENT,
        "crates/cli/sidecar.order is stale: {} of the {} functions it tracks are gone from the \
         debug build ({:.1} % left, {:.1} % needed), e.g.\n  {}\n{REFRESH}{hint}",
        missing.len(),
        twin.len(),
        share * 100.0,
        MIN_PRESENT * 100.0,
        missing
            .iter()
            .take(8)
            .copied()
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}

#[test]
fn key_strips_what_debug_and_release_names_do_not_share() {
    let legacy = "_ZN5proxy4http6handle17h0123456789abcdefE";
    assert_eq!(key(legacy), "_ZN5proxy4http6handle");
    assert_eq!(
        key(&format!("{legacy}.llvm.1234567")),
        "_ZN5proxy4http6handle"
    );
    // `..` inside a legacy path is an escaped `.`, not a suffix.
    assert_eq!(
        key("_ZN4core4iter8adapters3map8Map$LT$I$C$F$GT$..next17hfedcba9876543210E"),
        "_ZN4core4iter8adapters3map8Map$LT$I$C$F$GT$..next"
    );
    assert_eq!(key("rand_bytes_impl.part.0"), "rand_bytes_impl");
    assert_eq!(key("KeccakF1600_XORBytes"), "KeccakF1600_XORBytes");
    // A name that only looks like it ends in a hash keeps it.
    assert_eq!(
        key("_ZN3foo17hnothexnothexnotxE"),
        "_ZN3foo17hnothexnothexnotxE"
    );
    let v0 = "_RNvXsu_NtCsgEmfK2I1SDS_4core3numjNtNtNtB7_3str6traits7FromStr8from_str";
    assert_eq!(key(v0), v0);
}
