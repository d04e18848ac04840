//! `parity replay` on the committed fixtures: a layer run on a dump's own input repeats that dump
//! exactly when the dump is the engine's own, and a fault planted in one layer is named at that
//! layer with every other layer's own error within the noise.

mod common;

use common::{root, run_engine, Checkpoints};
use engine::fault::Fault;
use engine::model::Model;
use harness::catalog::Catalog;
use harness::dumps::{Dump, Lookup};
use harness::pipeline::CaseRun;
use harness::replay;
use harness::suite::Suite;
use harness::tensor::Values;

#[test]
fn replaying_the_engine_on_a_dump_of_its_own_leaves_no_own_error() {
    for (rel, arch) in [("tiny-llama/model-f32.gguf", "llama"), ("tiny-gpt2/model-f32.gguf", "gpt2")] {
        let model = Model::load(&root().join("fixtures/models").join(rel)).unwrap();
        let trace = harness::engine_run::trace(&model, "The quick brown fox", 1, 1.0, engine::Shared::default()).unwrap();
        // The engine's own trace written as a dump: only what a replay reads and compares.
        let dir = std::env::temp_dir().join(format!("parity-replay-own-{}-{arch}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut manifest = format!("reference = \"engine\"\nversion = \"1\"\narch = {arch:?}\nn_layers = {}\nmodel = \"m\"\nmodel_sha256 = \"00\"\nprompt = \"p\"\ntoken_ids = [1]\ndtype = \"float32\"\nthreads = 1\nn_generate = 1\ntemperature = 1.0\nwall_time_s = 0.1\ncommand = \"test\"\n", model.config().n_layers);
        for (key, tensor) in trace.tensors.iter().filter(|(_, t)| !t.is_ids()) {
            harness::npy::write(&dir.join(format!("{key}.npy")), tensor).unwrap();
            manifest.push_str(&format!("[tensors.{key:?}]\nfile = \"{key}.npy\"\n"));
        }
        std::fs::write(dir.join("manifest.toml"), manifest).unwrap();
        let dump = Dump::open(&dir).unwrap();
        let layers: Vec<usize> = (0..model.config().n_layers).collect();
        let replayed = replay::replay_on(&model, &dump, &layers).unwrap();
        let catalog = Catalog::load(&root().join("checkpoints/catalog.toml")).unwrap();
        let entries = replay::layer_entries(&catalog.entries(arch, model.config().n_layers), &layers);
        assert!(entries.len() >= 10 * layers.len(), "{rel}: {} entries", entries.len());
        for entry in &entries {
            let Ok(Lookup::Tensor(theirs)) = dump.get(&entry.key) else { panic!("{rel}: {} not in the dump", entry.key) };
            let mine = &replayed[&entry.key];
            let (Values::F32(a), Values::F32(b)) = (&mine.values, &theirs.values) else { panic!("{}: f32", entry.key) };
            let metrics = harness::compare::f32_metrics(b, a, false);
            assert_eq!(metrics[&reports::vocab::Metric::MaxAbs], 0.0, "{rel} {}", entry.key);
            assert_eq!(mine, &theirs, "{rel} {}", entry.key);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// The replay of tiny-llama-f32 x fox against its committed dumps, with `fault` planted.
fn replayed(fault: Option<Fault>) -> reports::replay::CaseReplay {
    let mut suite = Suite::load(&root().join("checkpoints/suite.toml")).unwrap();
    suite.models.retain(|m| m.id == "tiny-llama-f32");
    suite.prompts.retain(|p| p.id == "fox");
    let checkpoints = Checkpoints::load();
    let (_, runs): (_, Vec<CaseRun>) = run_engine(&checkpoints, &suite, suite.cases(), fault, "replay");
    let mut model = Model::load(&runs[0].model_path).unwrap();
    fault.into_iter().for_each(|f| model.inject_fault(f));
    let layers = replay::layers(&model, None).unwrap();
    let entries = checkpoints.catalog.entries("llama", model.config().n_layers);
    replay::replay_case(&model, &runs[0], &entries, &checkpoints.spec, &layers).unwrap()
}

#[test]
fn an_unplanted_engine_has_no_layer_whose_own_error_exceeds_the_noise() {
    let r = replayed(None);
    assert_eq!(r.sides.len(), 5, "four references and the truth");
    assert!(r.place_to_look().is_none(), "{:?}", r.place_to_look().map(|(_, c)| &c.own));
    // Layer 0's input is the same embedding everywhere, so its own error is its plain-run error.
    let truth = r.sides.iter().find(|s| s.reference == "pytorch-f64").unwrap();
    for c in truth.cells.iter().filter(|c| c.own.layer == Some(0)) {
        assert_eq!(c.own_rms, c.inherited_rms, "{}", c.own.key);
    }
}

#[test]
fn a_fault_planted_in_layer_1_is_named_at_layer_1_with_layer_0_clean() {
    let r = replayed(Some(Fault::NormEpsilonAt { layer: 1, times: 100.0 }));
    let (side, cell) = r.place_to_look().expect("the plant is found");
    assert_eq!((side.reference.as_str(), cell.own.key.as_str()), ("pytorch-f64", "blk.1.attn_norm"));
    for side in &r.sides {
        assert!(side.cells.iter().filter(|c| c.own.layer == Some(0)).all(|c| !c.own.status.is_failure()), "{}", side.reference);
        assert_eq!(side.first_own_failure().and_then(|c| c.own.layer), Some(1), "{}", side.reference);
    }
}

#[test]
fn a_layer_out_of_range_is_refused() {
    let model = Model::load(&root().join("fixtures/models/tiny-llama/model-f32.gguf")).unwrap();
    let err = replay::layers(&model, Some(2)).unwrap_err().to_string();
    assert_eq!(err, "layer 2 does not exist: the model has layers 0..2");
    assert_eq!(replay::layers(&model, Some(1)).unwrap(), vec![1]);
}

#[test]
fn noise_on_one_layers_ffn_output_is_named_there_and_nowhere_else() {
    let r = replayed(Some(Fault::PerturbFfn { layer: 1, rel: 1e-4 }));
    let (_, cell) = r.place_to_look().expect("the plant is found");
    assert_eq!(cell.own.key, "blk.1.ffn_out");
    let truth = r.sides.iter().find(|s| s.reference == "pytorch-f64").unwrap();
    let failing: Vec<&str> = truth.cells.iter().filter(|c| c.own.status.is_failure()).map(|c| c.own.key.as_str()).collect();
    assert!(failing.iter().all(|k| k.starts_with("blk.1.ffn_out") || *k == "blk.1.block_out"), "{failing:?}");
}

#[test]
fn noise_on_one_layers_output_is_named_at_that_block_out_and_the_next_layer_is_clean() {
    // The next layer inherits the noise (the plain run fails there too); replayed on the
    // references' own inputs it is clean, so the place to look is the block output itself.
    let r = replayed(Some(Fault::Perturb { layer: 0, rel: 1e-4 }));
    let (_, cell) = r.place_to_look().expect("the plant is found");
    assert_eq!(cell.own.key, "blk.0.block_out");
    let truth = r.sides.iter().find(|s| s.reference == "pytorch-f64").unwrap();
    assert!(truth.cells.iter().filter(|c| c.own.layer == Some(1)).all(|c| !c.own.status.is_failure()));
    assert!(truth.cells.iter().any(|c| c.own.layer == Some(1) && c.inherited_rms > Some(1e-5)), "layer 1 inherits the noise");
}
