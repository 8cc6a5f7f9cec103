//! The hand-written Avro encoder of derived events (`Engine::encode_avro`, used on the hot
//! path) must write exactly what apache-avro writes for the same record, nullable fields,
//! logical types and all.

use weir::pipeline::load_file;
use weir::runtime::engine::Engine;
use weir::sink::encode::ResultFormat;
use weir::source::file::{FileSource, InputFormat};
use weir::state::Store;
use weir_tests::repo;

fn check(case: &str, input: &str) -> usize {
    let dir = repo().join("tests/golden").join(case);
    let loaded = load_file(&dir.join("pipeline.yaml"), None);
    let plan = loaded.plan.expect("valid golden pipeline");
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), &plan.state).unwrap();
    let source = FileSource::open(&dir.join(input), InputFormat::Auto, "t").unwrap();
    let mut engine = Engine::new(&plan, source.container_schema().cloned());
    let (mut emitted, mut dead) = (Vec::new(), Vec::new());
    for rec in source {
        engine
            .process(&store, &rec.unwrap(), &mut |e| emitted.push(e), &mut dead)
            .unwrap();
    }
    engine.finish(&store, &mut |e| emitted.push(e)).unwrap();
    let format = ResultFormat::new(&plan);
    assert!(!emitted.is_empty());
    for e in &emitted {
        let mut ours = Vec::new();
        format.encode_avro(e, &mut ours);
        let value = format.output_value(e);
        assert!(value.validate(&plan.output.schema), "{case}: {value:?}");
        let theirs = apache_avro::to_avro_datum(&plan.output.schema, value.clone()).unwrap();
        assert_eq!(ours, theirs, "{case}: {value:?}");
        // And the bytes read back as the same record.
        let back =
            apache_avro::from_avro_datum(&plan.output.schema, &mut ours.as_slice(), None).unwrap();
        assert_eq!(back, value, "{case}");
    }
    emitted.len()
}

#[test]
fn direct_encoding_matches_apache_avro() {
    assert_eq!(check("aggregations", "input.jsonl"), 2);
    assert_eq!(check("complex_types", "input.avro"), 3);
    assert!(check("many_keys", "input.jsonl") > 100);
}
