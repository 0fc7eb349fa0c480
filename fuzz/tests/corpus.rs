//! Replays every kept fuzz input (`fuzz/corpus/<target>/*`) through its
//! target: what the fuzzer once found must stay fixed. The corpus grows with
//! each fuzzing run (see `fuzz/README.md`); this runs on stable, in the
//! ordinary test suite.

use std::path::Path;

#[test]
fn every_kept_input_runs_without_a_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut replayed = 0;
    for (name, target) in honeycell_fuzz::TARGETS {
        let dir = root.join(name);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("the corpus of {name} ({}): {e}", dir.display()));
        let mut n = 0;
        for entry in entries {
            let path = entry.expect("a corpus entry").path();
            let data = std::fs::read(&path).expect("a corpus file");
            target(&data);
            n += 1;
        }
        assert!(n > 0, "the corpus of {name} is empty");
        replayed += n;
    }
    eprintln!("replayed {replayed} inputs");
}
