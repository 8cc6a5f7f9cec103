//! The pipeline definition loader: any text, YAML to Plan. Never a panic; a definition
//! either compiles with no problem or reports at least one, each with a message and a fix.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use weir::pipeline::load_str;
use weir::schema::SchemaResolver;

fuzz_target!(
    init: {
        // libfuzzer-sys aborts on every panic from its hook, even one Weir catches: the
        // loader catches cel-parser's panics on purpose. An uncaught panic still aborts (the
        // harness's own catch_unwind), and is reported as a crash.
        std::panic::set_hook(Box::new(|info| eprintln!("panic (caught or not): {info}")));
    },
    |data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
    let loaded = load_str(text, "fuzz.yaml", &SchemaResolver::in_dir(&schemas));
    if loaded.problems.is_empty() {
        assert!(loaded.plan.is_some(), "no problem and no plan");
    }
    for p in &loaded.problems {
        assert!(!p.message.is_empty() && !p.fix.is_empty(), "{p:?}");
    }
    }
);
