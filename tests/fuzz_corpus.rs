//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the same property
//! functions the fuzz targets call (`coolstream::harness`), on stable Rust: every input a
//! fuzzer kept, and every crash it found and we fixed, runs in `cargo test`.

use std::path::Path;

#[test]
fn every_target_has_a_corpus_and_a_fuzz_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for (name, _) in coolstream::harness::TARGETS {
        let target = root.join("fuzz_targets").join(format!("{name}.rs"));
        assert!(target.is_file(), "no fuzz target {}", target.display());
        let dir = root.join("corpus").join(name);
        let n = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .count();
        assert!(n > 0, "empty corpus {}", dir.display());
    }
}

#[test]
fn corpus_replays_without_a_failure() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("corpus");
    let mut total = 0;
    for (name, check) in coolstream::harness::TARGETS {
        let dir = root.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("corpus entry").path())
            .collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let r = std::panic::catch_unwind(|| check(&data));
            assert!(r.is_ok(), "{name}: {} fails", f.display());
            total += 1;
        }
    }
    assert!(total >= coolstream::harness::TARGETS.len());
}
