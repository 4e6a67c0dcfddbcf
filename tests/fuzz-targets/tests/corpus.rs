//! Every input of the fuzz corpus (`fuzz/corpus/<target>/`: the seeds, and
//! `fuzz/regressions/<target>/`: every input that once made a target fail)
//! through its target, as part of the ordinary test suite.
use std::path::Path;

use wasmsec_fuzz_targets::TARGETS;

/// The targets' allocation checks count under this allocator only.
#[global_allocator]
static METERED: wasmsec_fuzz_targets::alloc_meter::Metered = wasmsec_fuzz_targets::alloc_meter::Metered;

#[test]
fn every_corpus_and_regression_input_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    for (name, target) in TARGETS {
        let mut n = 0;
        for kind in ["corpus", "regressions"] {
            let Ok(dir) = std::fs::read_dir(root.join(kind).join(name)) else { continue };
            for f in dir.flatten() {
                let data = std::fs::read(f.path()).unwrap();
                target(&data);
                n += 1;
            }
        }
        assert!(n > 0, "no seed inputs for fuzz target {name}");
        println!("{name}: {n} inputs pass");
    }
}

#[test]
fn the_responder_seed_reaches_an_established_child_sa() {
    // The seed is only useful if it gets past IKE_AUTH: replay it and look.
    let data = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/ike_responder/negotiation"))
        .expect("the generated seed (cargo run -p wasmsec-fuzz-targets --bin make-seeds)");
    let records = wasmsec_fuzz_targets::records(&data);
    assert!(records.len() >= 4, "IKE_SA_INIT, IKE_AUTH and more");
    let (e, _, _) = wasmsec_fuzz_targets::replay_responder(&data);
    let (ike, children) = e.established();
    assert!(ike >= 1 && children >= 1, "{ike} IKE SAs, {children} CHILD SAs: {:?}", e.stats());
}
