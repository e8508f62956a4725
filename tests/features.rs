//! What an embedding host compiles: the engine depends on the engine-recorder contract only
//! (no store, no libSQL), and `luametrics` without its default features pulls neither the HTTP
//! server (axum) nor the command line (clap, indicatif). Read from `cargo tree` over
//! this workspace's lockfile, offline.

use std::process::Command;

/// The crate names in `cargo tree`'s normal-dependency graph for `args`.
fn tree(args: &[&str]) -> Vec<String> {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn the_engine_builds_without_the_store_or_libsql() {
    let deps = tree(&["-p", "luametrics-engine"]);
    assert!(deps.iter().any(|d| d == "mlua"), "{deps:?}");
    assert!(deps.iter().any(|d| d == "luametrics-sink"), "{deps:?}");
    for banned in [
        "luametrics-store",
        "luametrics-recorder",
        "libsql",
        "libsql-sys",
    ] {
        assert!(
            !deps.iter().any(|d| d == banned),
            "the engine pulls {banned}"
        );
    }
}

#[test]
fn the_pipeline_records_through_the_contract_not_the_recorder() {
    let deps = tree(&["-p", "luametrics-pipeline"]);
    assert!(deps.iter().any(|d| d == "luametrics-sink"), "{deps:?}");
    assert!(
        !deps.iter().any(|d| d == "luametrics-recorder"),
        "the pipeline pulls the recorder"
    );
}

#[test]
fn an_embedding_host_compiles_neither_the_server_nor_the_cli() {
    let lean = tree(&["-p", "luametrics", "--no-default-features"]);
    assert!(lean.iter().any(|d| d == "luametrics-runtime"), "{lean:?}");
    // (hyper stays: libSQL's remote client uses it.)
    for banned in ["axum", "luametrics-server", "clap", "indicatif"] {
        assert!(
            !lean.iter().any(|d| d == banned),
            "luametrics without default features pulls {banned}"
        );
    }
    // The defaults do carry them (the binary needs them): the check above can fail.
    let full = tree(&["-p", "luametrics"]);
    for needed in ["axum", "clap", "luametrics-server"] {
        assert!(
            full.iter().any(|d| d == needed),
            "default features lack {needed}"
        );
    }
}
